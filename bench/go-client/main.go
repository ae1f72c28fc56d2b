// kmsload plays kube-apiserver against a KMS v2 plugin: one ClientConn over
// a unix socket, many concurrent calls on it, per-call latency recorded.
// It prints one JSON line on stdout.
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
)

type options struct {
	socket   string
	mode     string
	c        int
	duration time.Duration
	warmup   time.Duration
	timeout  time.Duration
	dialWait time.Duration
	out      string
	in       string
	n        int
	pool     int
	check    bool
}

type report struct {
	Mode         string   `json:"mode"`
	Concurrency  int      `json:"concurrency"`
	Calls        int64    `json:"calls"`
	Errors       int64    `json:"errors"`
	Seconds      float64  `json:"seconds"`
	CallsPerSec  float64  `json:"callsPerSec"`
	P50Ms        float64  `json:"p50Ms"`
	P99Ms        float64  `json:"p99Ms"`
	MaxMs        float64  `json:"maxMs"`
	TotalSeconds *float64 `json:"totalSeconds,omitempty"`
	Mismatches   *int64   `json:"mismatches,omitempty"`
}

// entry is one wrapped seed, as written by gen and read by storm.
type entry struct {
	Plaintext   []byte            `json:"plaintext"`
	Ciphertext  []byte            `json:"ciphertext"`
	KeyID       string            `json:"keyId"`
	Annotations map[string][]byte `json:"annotations,omitempty"`
}

type client struct {
	cc       *grpc.ClientConn
	timeout  time.Duration
	errCount int64
	errOnce  sync.Once
}

func fatalf(format string, a ...interface{}) {
	fmt.Fprintf(os.Stderr, "kmsload: "+format+"\n", a...)
	os.Exit(1)
}

func main() {
	var o options
	flag.StringVar(&o.socket, "socket", "", "plugin socket: a path or unix:///path")
	flag.StringVar(&o.mode, "mode", "encrypt", "status|encrypt|decrypt|mixed|gen|storm")
	flag.IntVar(&o.c, "c", 1, "concurrent calls in flight")
	flag.DurationVar(&o.duration, "duration", 5*time.Second, "measured time (encrypt, decrypt, mixed)")
	flag.DurationVar(&o.warmup, "warmup", 2*time.Second, "unmeasured load before the measured time")
	flag.DurationVar(&o.timeout, "timeout", 3*time.Second, "per-call deadline (kube-apiserver default)")
	flag.DurationVar(&o.dialWait, "dial-timeout", 10*time.Second, "how long to wait for the socket to accept")
	flag.StringVar(&o.out, "out", "", "gen: output file (JSON lines)")
	flag.StringVar(&o.in, "in", "", "storm: input file written by gen")
	flag.IntVar(&o.n, "n", 10000, "gen: number of seeds to wrap")
	flag.IntVar(&o.pool, "pool", 64, "decrypt/mixed: distinct ciphertexts to cycle through")
	flag.BoolVar(&o.check, "check", true, "decrypt/storm: compare plaintexts (off for an echo server)")
	flag.Parse()

	if o.socket == "" {
		fatalf("-socket is required")
	}
	if o.c < 1 {
		o.c = 1
	}
	target := o.socket
	if !strings.HasPrefix(target, "unix:") {
		target = "unix://" + target
	}

	dialCtx, cancel := context.WithTimeout(context.Background(), o.dialWait)
	cc, err := grpc.DialContext(dialCtx, target, grpc.WithInsecure(), grpc.WithBlock())
	cancel()
	if err != nil {
		fatalf("dial %s: %v", target, err)
	}
	defer cc.Close()
	cl := &client{cc: cc, timeout: o.timeout}

	var rep report
	switch o.mode {
	case "status":
		runStatus(cl)
		return
	case "encrypt":
		rep = runEncrypt(cl, o)
	case "decrypt", "mixed":
		rep = runDecrypt(cl, o)
	case "gen":
		rep = runGen(cl, o)
	case "storm":
		rep = runStorm(cl, o)
	default:
		fatalf("unknown -mode %q", o.mode)
	}
	rep.Mode = o.mode
	rep.Concurrency = o.c
	rep.Errors = atomic.LoadInt64(&cl.errCount)
	line, _ := json.Marshal(rep)
	fmt.Println(string(line))
}

func (cl *client) fail(err error) {
	atomic.AddInt64(&cl.errCount, 1)
	cl.errOnce.Do(func() { fmt.Fprintf(os.Stderr, "kmsload: first error: %v\n", err) })
}

func (cl *client) invoke(method string, req []byte) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), cl.timeout)
	defer cancel()
	var resp []byte
	err := cl.cc.Invoke(ctx, method, &req, &resp)
	return resp, err
}

func (cl *client) status() (statusResponse, error) {
	resp, err := cl.invoke(methodStatus, nil)
	if err != nil {
		return statusResponse{}, err
	}
	return decodeStatusResponse(resp)
}

func (cl *client) encrypt(plaintext []byte) (encryptResponse, error) {
	resp, err := cl.invoke(methodEncrypt, encodeEncryptRequest(plaintext, newUID()))
	if err != nil {
		return encryptResponse{}, err
	}
	r, err := decodeEncryptResponse(resp)
	if err == nil && (len(r.Ciphertext) == 0 || r.KeyID == "") {
		err = errors.New("encrypt reply without ciphertext or key_id")
	}
	return r, err
}

func (cl *client) decrypt(e *entry) ([]byte, error) {
	resp, err := cl.invoke(methodDecrypt, encodeDecryptRequest(e.Ciphertext, newUID(), e.KeyID, e.Annotations))
	if err != nil {
		return nil, err
	}
	return decodeDecryptResponse(resp)
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		fatalf("random: %v", err)
	}
	return b
}

// newUID makes a UUID-shaped request id, as the apiserver sends.
func newUID() string {
	b := randomBytes(16)
	b[6] = (b[6] & 0x0f) | 0x40
	b[8] = (b[8] & 0x3f) | 0x80
	h := hex.EncodeToString(b)
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

func runStatus(cl *client) {
	s, err := cl.status()
	if err != nil {
		fatalf("status: %v", err)
	}
	line, _ := json.Marshal(s)
	fmt.Println(string(line))
}

// timed runs call from c workers: warmup first (not counted), then the
// measured window. Calls started inside the window are counted; seconds run
// from the window start to the last of those calls finishing.
func timed(cl *client, c int, warmup, duration time.Duration, call func(worker, iter int) error) report {
	start := time.Now()
	measureFrom := start.Add(warmup)
	stopAt := measureFrom.Add(duration)
	lats := make([][]int64, c)
	var wg sync.WaitGroup
	for w := 0; w < c; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			local := make([]int64, 0, 4096)
			for i := 0; ; i++ {
				t0 := time.Now()
				if !t0.Before(stopAt) {
					break
				}
				err := call(w, i)
				d := time.Since(t0)
				if t0.Before(measureFrom) {
					continue
				}
				if err != nil {
					cl.fail(err)
				}
				local = append(local, int64(d))
			}
			lats[w] = local
		}(w)
	}
	wg.Wait()
	return summarize(lats, time.Since(measureFrom))
}

// counted runs exactly n calls spread over c workers, as fast as possible.
func counted(cl *client, c, n int, call func(i int) error) report {
	lats := make([][]int64, c)
	var next int64 = -1
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < c; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			local := make([]int64, 0, n/c+1)
			for {
				i := int(atomic.AddInt64(&next, 1))
				if i >= n {
					break
				}
				t0 := time.Now()
				err := call(i)
				local = append(local, int64(time.Since(t0)))
				if err != nil {
					cl.fail(err)
				}
			}
			lats[w] = local
		}(w)
	}
	wg.Wait()
	return summarize(lats, time.Since(start))
}

func summarize(lats [][]int64, elapsed time.Duration) report {
	var all []int64
	for _, l := range lats {
		all = append(all, l...)
	}
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	r := report{Calls: int64(len(all)), Seconds: round(elapsed.Seconds(), 3)}
	if elapsed > 0 {
		r.CallsPerSec = round(float64(len(all))/elapsed.Seconds(), 1)
	}
	r.P50Ms = round(percentile(all, 0.50), 3)
	r.P99Ms = round(percentile(all, 0.99), 3)
	r.MaxMs = round(percentile(all, 1), 3)
	return r
}

func percentile(sorted []int64, q float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q * float64(len(sorted)-1))
	return float64(sorted[i]) / 1e6
}

func round(v float64, digits int) float64 {
	p := 1.0
	for i := 0; i < digits; i++ {
		p *= 10
	}
	return float64(int64(v*p+0.5)) / p
}

func runEncrypt(cl *client, o options) report {
	return timed(cl, o.c, o.warmup, o.duration, func(_, _ int) error {
		_, err := cl.encrypt(randomBytes(32))
		return err
	})
}

// prepare wraps n fresh seeds with c calls in flight.
func prepare(cl *client, c, n int) ([]entry, report) {
	entries := make([]entry, n)
	rep := counted(cl, c, n, func(i int) error {
		pt := randomBytes(32)
		r, err := cl.encrypt(pt)
		if err != nil {
			return err
		}
		entries[i] = entry{Plaintext: pt, Ciphertext: r.Ciphertext, KeyID: r.KeyID, Annotations: r.Annotations}
		return nil
	})
	return entries, rep
}

// runDecrypt cycles Decrypt over a pool of ciphertexts wrapped up front;
// mixed alternates Encrypt and Decrypt (used for warm-up).
func runDecrypt(cl *client, o options) report {
	pool := o.pool
	if pool < 1 {
		pool = 1
	}
	entries, prep := prepare(cl, o.c, pool)
	if prep.Calls == 0 || atomic.LoadInt64(&cl.errCount) > 0 {
		fatalf("could not wrap the ciphertexts to decrypt (%d errors)", atomic.LoadInt64(&cl.errCount))
	}
	var mismatches int64
	rep := timed(cl, o.c, o.warmup, o.duration, func(w, i int) error {
		if o.mode == "mixed" && i%2 == 0 {
			_, err := cl.encrypt(randomBytes(32))
			return err
		}
		e := &entries[(w+i*o.c)%len(entries)]
		pt, err := cl.decrypt(e)
		if err == nil && o.check && !bytes.Equal(pt, e.Plaintext) {
			atomic.AddInt64(&mismatches, 1)
		}
		return err
	})
	if o.check {
		rep.Mismatches = &mismatches
	}
	return rep
}

func runGen(cl *client, o options) report {
	if o.out == "" {
		fatalf("gen needs -out")
	}
	entries, rep := prepare(cl, o.c, o.n)
	f, err := os.Create(o.out)
	if err != nil {
		fatalf("%v", err)
	}
	w := bufio.NewWriter(f)
	enc := json.NewEncoder(w)
	written := 0
	for i := range entries {
		if entries[i].Ciphertext == nil {
			continue // that call failed; already counted
		}
		if err := enc.Encode(&entries[i]); err != nil {
			fatalf("write %s: %v", o.out, err)
		}
		written++
	}
	if err := w.Flush(); err != nil {
		fatalf("write %s: %v", o.out, err)
	}
	if err := f.Close(); err != nil {
		fatalf("write %s: %v", o.out, err)
	}
	if written != o.n {
		fmt.Fprintf(os.Stderr, "kmsload: wrote %d of %d entries\n", written, o.n)
	}
	return rep
}

func readEntries(path string) []entry {
	f, err := os.Open(path)
	if err != nil {
		fatalf("%v", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64*1024), 4*1024*1024)
	var out []entry
	for sc.Scan() {
		if len(bytes.TrimSpace(sc.Bytes())) == 0 {
			continue
		}
		var e entry
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			fatalf("%s line %d: %v", path, len(out)+1, err)
		}
		out = append(out, e)
	}
	if err := sc.Err(); err != nil {
		fatalf("read %s: %v", path, err)
	}
	return out
}

// runStorm replays a restarted apiserver: Decrypt every stored seed at once.
func runStorm(cl *client, o options) report {
	if o.in == "" {
		fatalf("storm needs -in")
	}
	entries := readEntries(o.in)
	if o.n > 0 && o.n < len(entries) {
		entries = entries[:o.n]
	}
	var mismatches int64
	rep := counted(cl, o.c, len(entries), func(i int) error {
		e := &entries[i]
		pt, err := cl.decrypt(e)
		if err == nil && o.check && !bytes.Equal(pt, e.Plaintext) {
			atomic.AddInt64(&mismatches, 1)
		}
		return err
	})
	total := rep.Seconds
	rep.TotalSeconds = &total
	if o.check {
		rep.Mismatches = &mismatches
	}
	return rep
}

// refplugin: the Go reference for the one-call-per-operation plugin points of
// `npm run bench`. A KMS v2 gRPC server on a unix socket that turns every
// Encrypt and Decrypt into exactly one HTTP call to a Fortanix DSM API (here
// keyhaven's, docs/compat-dsm.md), as the SmartKey plugin does: Go's net/http
// with keep-alive, AES-GCM by kid, the session's Bearer token (the auth the
// keyhaven fortanix-dsm provider uses). It is a yardstick, not a plugin: no
// failover, no rekey handling, no health checks beyond Status.
package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/ioutil"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"

	"kmswire"
)

type plugin struct {
	endpoint string
	apiKey   string // base64("app:secret"), sent as Basic to open a session
	cluster  string
	http     *http.Client

	mu    sync.Mutex
	token string
	kid   string
}

// do sends one JSON request with the session token; out may be nil.
func (p *plugin) do(ctx context.Context, method, path string, in, out interface{}) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, p.endpoint+path, body)
	if err != nil {
		return err
	}
	p.mu.Lock()
	tok := p.token
	p.mu.Unlock()
	req.Header.Set("Authorization", "Bearer "+tok)
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	res, err := p.http.Do(req)
	if err != nil {
		return status.Error(codes.Unavailable, err.Error())
	}
	defer res.Body.Close()
	data, err := ioutil.ReadAll(io.LimitReader(res.Body, 1<<20))
	if err != nil {
		return status.Error(codes.Unavailable, err.Error())
	}
	if res.StatusCode == http.StatusUnauthorized {
		return errUnauthorized
	}
	if res.StatusCode/100 != 2 {
		return status.Errorf(codes.Internal, "%s %s: HTTP %d: %.200s", method, path, res.StatusCode, data)
	}
	if out == nil {
		return nil
	}
	return json.Unmarshal(data, out)
}

var errUnauthorized = errors.New("unauthorized")

// call is do with one new session after a 401 (the session ended early).
func (p *plugin) call(ctx context.Context, method, path string, in, out interface{}) error {
	err := p.do(ctx, method, path, in, out)
	if err != errUnauthorized {
		return err
	}
	if err := p.openSession(ctx); err != nil {
		return err
	}
	if err := p.do(ctx, method, path, in, out); err != nil {
		if err == errUnauthorized {
			return status.Error(codes.Unauthenticated, "DSM refused a fresh session")
		}
		return err
	}
	return nil
}

func (p *plugin) openSession(ctx context.Context) error {
	req, err := http.NewRequestWithContext(ctx, "POST", p.endpoint+"/sys/v1/session/auth", nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Basic "+p.apiKey)
	res, err := p.http.Do(req)
	if err != nil {
		return status.Error(codes.Unavailable, err.Error())
	}
	defer res.Body.Close()
	data, _ := ioutil.ReadAll(io.LimitReader(res.Body, 1<<20))
	if res.StatusCode != http.StatusOK {
		return status.Errorf(codes.Unauthenticated, "session auth: HTTP %d", res.StatusCode)
	}
	var s struct {
		AccessToken string `json:"access_token"`
	}
	if err := json.Unmarshal(data, &s); err != nil || s.AccessToken == "" {
		return status.Error(codes.Unavailable, "session auth: no access_token")
	}
	p.mu.Lock()
	p.token = s.AccessToken
	p.mu.Unlock()
	return nil
}

// findKey reads the kid of the object named name.
func (p *plugin) findKey(ctx context.Context, name string) error {
	var list []struct {
		Kid  string `json:"kid"`
		Name string `json:"name"`
	}
	if err := p.call(ctx, "GET", "/crypto/v1/keys?name="+url.QueryEscape(name), nil, &list); err != nil {
		return err
	}
	for _, o := range list {
		if o.Name == name {
			p.kid = strings.ToLower(o.Kid)
			return nil
		}
	}
	return fmt.Errorf("no DSM object named %q", name)
}

func (p *plugin) ad(kid string) string {
	return base64.StdEncoding.EncodeToString([]byte("keyhaven-bench/refplugin\x00cluster=" + p.cluster + "\x00kid=" + kid))
}

// Ciphertext: kid length (1) | kid | iv length (1) | iv | tag (16) | cipher.
func pack(kid string, iv, tag, cipher []byte) []byte {
	b := make([]byte, 0, 2+len(kid)+len(iv)+len(tag)+len(cipher))
	b = append(b, byte(len(kid)))
	b = append(b, kid...)
	b = append(b, byte(len(iv)))
	b = append(b, iv...)
	b = append(b, tag...)
	return append(b, cipher...)
}

func unpack(c []byte) (kid string, iv, tag, cipher []byte, err error) {
	bad := status.Error(codes.InvalidArgument, "not a refplugin ciphertext")
	if len(c) < 1 || len(c) < 1+int(c[0])+1 {
		return "", nil, nil, nil, bad
	}
	kid = string(c[1 : 1+c[0]])
	c = c[1+c[0]:]
	n := int(c[0])
	if len(c) < 1+n+16 {
		return "", nil, nil, nil, bad
	}
	return kid, c[1 : 1+n], c[1+n : 1+n+16], c[1+n+16:], nil
}

func b64(s string) ([]byte, error) { return base64.StdEncoding.DecodeString(s) }

func (p *plugin) encrypt(ctx context.Context, plaintext []byte) ([]byte, error) {
	kid := p.kid
	var res struct {
		Cipher string `json:"cipher"`
		Iv     string `json:"iv"`
		Tag    string `json:"tag"`
	}
	in := map[string]interface{}{"alg": "AES", "mode": "GCM", "plain": base64.StdEncoding.EncodeToString(plaintext), "ad": p.ad(kid), "tag_len": 128}
	if err := p.call(ctx, "POST", "/crypto/v1/keys/"+kid+"/encrypt", in, &res); err != nil {
		return nil, err
	}
	cipher, e1 := b64(res.Cipher)
	iv, e2 := b64(res.Iv)
	tag, e3 := b64(res.Tag)
	if e1 != nil || e2 != nil || e3 != nil || len(tag) != 16 || len(iv) > 255 {
		return nil, status.Error(codes.Unavailable, "DSM answered encrypt with an unexpected shape")
	}
	return pack(kid, iv, tag, cipher), nil
}

func (p *plugin) decrypt(ctx context.Context, ciphertext []byte) ([]byte, error) {
	kid, iv, tag, cipher, err := unpack(ciphertext)
	if err != nil {
		return nil, err
	}
	var res struct {
		Plain string `json:"plain"`
	}
	in := map[string]interface{}{
		"alg": "AES", "mode": "GCM", "ad": p.ad(kid),
		"cipher": base64.StdEncoding.EncodeToString(cipher), "iv": base64.StdEncoding.EncodeToString(iv), "tag": base64.StdEncoding.EncodeToString(tag),
	}
	if err := p.call(ctx, "POST", "/crypto/v1/keys/"+url.PathEscape(kid)+"/decrypt", in, &res); err != nil {
		return nil, err
	}
	plain, err := b64(res.Plain)
	if err != nil {
		return nil, status.Error(codes.Unavailable, "DSM answered decrypt without a base64 plain")
	}
	return plain, nil
}

// ---------------------------------------------------------------- gRPC

func unary(h func(p *plugin, ctx context.Context, req []byte) ([]byte, error)) func(interface{}, context.Context, func(interface{}) error, grpc.UnaryServerInterceptor) (interface{}, error) {
	return func(srv interface{}, ctx context.Context, dec func(interface{}) error, _ grpc.UnaryServerInterceptor) (interface{}, error) {
		var req []byte
		if err := dec(&req); err != nil {
			return nil, err
		}
		out, err := h(srv.(*plugin), ctx, req)
		if err != nil {
			return nil, err
		}
		return out, nil
	}
}

func handleStatus(p *plugin, _ context.Context, _ []byte) ([]byte, error) {
	var b []byte
	b = kmswire.AppendString(b, 1, "v2")
	b = kmswire.AppendString(b, 2, "ok")
	return kmswire.AppendString(b, 3, "dsm:"+p.kid), nil
}

func handleEncrypt(p *plugin, ctx context.Context, req []byte) ([]byte, error) {
	var plaintext []byte
	if err := kmswire.EachLenField(req, func(num protowire.Number, v []byte) error {
		if num == 1 {
			plaintext = v
		}
		return nil
	}); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	c, err := p.encrypt(ctx, plaintext)
	if err != nil {
		return nil, err
	}
	var b []byte
	b = kmswire.AppendBytes(b, 1, c)
	return kmswire.AppendString(b, 2, "dsm:"+p.kid), nil
}

func handleDecrypt(p *plugin, ctx context.Context, req []byte) ([]byte, error) {
	var ciphertext []byte
	if err := kmswire.EachLenField(req, func(num protowire.Number, v []byte) error {
		if num == 1 {
			ciphertext = v
		}
		return nil
	}); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	pt, err := p.decrypt(ctx, ciphertext)
	if err != nil {
		return nil, err
	}
	return kmswire.AppendBytes(nil, 1, pt), nil
}

var serviceDesc = grpc.ServiceDesc{
	ServiceName: "v2.KeyManagementService",
	HandlerType: (*interface{})(nil),
	Methods: []grpc.MethodDesc{
		{MethodName: "Status", Handler: unary(handleStatus)},
		{MethodName: "Encrypt", Handler: unary(handleEncrypt)},
		{MethodName: "Decrypt", Handler: unary(handleDecrypt)},
	},
	Metadata: "api.proto",
}

func fatalf(format string, a ...interface{}) {
	fmt.Fprintf(os.Stderr, "refplugin: "+format+"\n", a...)
	os.Exit(1)
}

func main() {
	socket := flag.String("socket", "", "unix socket path to serve KMS v2 on")
	endpoint := flag.String("endpoint", "", "DSM API base URL, e.g. http://127.0.0.1:8200")
	apiKeyFile := flag.String("api-key-file", "", "file holding the DSM API key (base64 of app:secret)")
	keyName := flag.String("key-name", "", "name of the DSM security object")
	cluster := flag.String("cluster", "bench", "bound into the GCM additional data")
	flag.Parse()
	if *socket == "" || *endpoint == "" || *apiKeyFile == "" || *keyName == "" {
		fatalf("-socket, -endpoint, -api-key-file and -key-name are required")
	}
	key, err := ioutil.ReadFile(*apiKeyFile)
	if err != nil {
		fatalf("reading the API key file: %v", err)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	// As many idle connections as calls in flight: the default (2 per host) would reconnect under load.
	tr.MaxIdleConns = 256
	tr.MaxIdleConnsPerHost = 256
	p := &plugin{
		endpoint: strings.TrimRight(*endpoint, "/"),
		apiKey:   strings.TrimSpace(string(key)),
		cluster:  *cluster,
		http:     &http.Client{Transport: tr, Timeout: 10 * time.Second},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	if err := p.openSession(ctx); err != nil {
		fatalf("%v", err)
	}
	if err := p.findKey(ctx, *keyName); err != nil {
		fatalf("%v", err)
	}
	cancel()

	_ = os.Remove(*socket)
	lis, err := net.Listen("unix", *socket)
	if err != nil {
		fatalf("listen: %v", err)
	}
	srv := grpc.NewServer()
	srv.RegisterService(&serviceDesc, p)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-sig
		srv.Stop()
	}()
	if err := srv.Serve(lis); err != nil && err != grpc.ErrServerStopped {
		fatalf("serve: %v", err)
	}
	_ = os.Remove(*socket)
}

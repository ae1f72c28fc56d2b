package main

// Hand-written encoding of the few v2 KMS messages, so the client builds
// from Debian's grpc-go 1.33 without protoc or generated code.

import (
	"fmt"

	"google.golang.org/grpc/encoding"
	"google.golang.org/protobuf/encoding/protowire"
)

const (
	methodStatus  = "/v2.KeyManagementService/Status"
	methodEncrypt = "/v2.KeyManagementService/Encrypt"
	methodDecrypt = "/v2.KeyManagementService/Decrypt"
)

// rawCodec carries already-encoded protobuf bytes through grpc unchanged.
// Registered as "proto" so the wire content-type is the usual
// application/grpc (what kube-apiserver sends).
type rawCodec struct{}

func (rawCodec) Name() string { return "proto" }

func (rawCodec) Marshal(v interface{}) ([]byte, error) {
	switch m := v.(type) {
	case *[]byte:
		return *m, nil
	case []byte:
		return m, nil
	}
	return nil, fmt.Errorf("rawCodec: cannot marshal %T", v)
}

func (rawCodec) Unmarshal(data []byte, v interface{}) error {
	p, ok := v.(*[]byte)
	if !ok {
		return fmt.Errorf("rawCodec: cannot unmarshal into %T", v)
	}
	// Copy: the transport owns data.
	*p = append((*p)[:0], data...)
	return nil
}

// main's init runs after grpc's own, so this replaces the default "proto" codec.
func init() { encoding.RegisterCodec(rawCodec{}) }

func appendBytesField(b []byte, num protowire.Number, v []byte) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendBytes(b, v)
}

func appendStringField(b []byte, num protowire.Number, v string) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendString(b, v)
}

// appendAnnotations encodes a map<string, bytes> as repeated entry messages.
func appendAnnotations(b []byte, num protowire.Number, m map[string][]byte) []byte {
	for k, v := range m {
		var e []byte
		e = appendStringField(e, 1, k)
		e = appendBytesField(e, 2, v)
		b = appendBytesField(b, num, e)
	}
	return b
}

// eachLenField calls f for every length-delimited field and skips the rest.
func eachLenField(b []byte, f func(num protowire.Number, v []byte) error) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
		if typ == protowire.BytesType {
			v, m := protowire.ConsumeBytes(b)
			if m < 0 {
				return protowire.ParseError(m)
			}
			if err := f(num, v); err != nil {
				return err
			}
			b = b[m:]
			continue
		}
		m := protowire.ConsumeFieldValue(num, typ, b)
		if m < 0 {
			return protowire.ParseError(m)
		}
		b = b[m:]
	}
	return nil
}

func parseMapEntry(b []byte) (string, []byte, error) {
	var k string
	var v []byte
	err := eachLenField(b, func(num protowire.Number, x []byte) error {
		switch num {
		case 1:
			k = string(x)
		case 2:
			v = append([]byte{}, x...)
		}
		return nil
	})
	return k, v, err
}

func encodeEncryptRequest(plaintext []byte, uid string) []byte {
	b := make([]byte, 0, len(plaintext)+len(uid)+8)
	b = appendBytesField(b, 1, plaintext)
	b = appendStringField(b, 2, uid)
	return b
}

type encryptResponse struct {
	Ciphertext  []byte
	KeyID       string
	Annotations map[string][]byte
}

func decodeEncryptResponse(b []byte) (encryptResponse, error) {
	var r encryptResponse
	err := eachLenField(b, func(num protowire.Number, v []byte) error {
		switch num {
		case 1:
			r.Ciphertext = append([]byte{}, v...)
		case 2:
			r.KeyID = string(v)
		case 3:
			k, val, err := parseMapEntry(v)
			if err != nil {
				return err
			}
			if r.Annotations == nil {
				r.Annotations = map[string][]byte{}
			}
			r.Annotations[k] = val
		}
		return nil
	})
	return r, err
}

func encodeDecryptRequest(ciphertext []byte, uid, keyID string, ann map[string][]byte) []byte {
	b := make([]byte, 0, len(ciphertext)+len(uid)+len(keyID)+16)
	b = appendBytesField(b, 1, ciphertext)
	b = appendStringField(b, 2, uid)
	b = appendStringField(b, 3, keyID)
	return appendAnnotations(b, 4, ann)
}

func decodeDecryptResponse(b []byte) ([]byte, error) {
	var pt []byte
	err := eachLenField(b, func(num protowire.Number, v []byte) error {
		if num == 1 {
			pt = append([]byte{}, v...)
		}
		return nil
	})
	return pt, err
}

type statusResponse struct {
	Version string `json:"version"`
	Healthz string `json:"healthz"`
	KeyID   string `json:"keyId"`
}

func decodeStatusResponse(b []byte) (statusResponse, error) {
	var r statusResponse
	err := eachLenField(b, func(num protowire.Number, v []byte) error {
		switch num {
		case 1:
			r.Version = string(v)
		case 2:
			r.Healthz = string(v)
		case 3:
			r.KeyID = string(v)
		}
		return nil
	})
	return r, err
}

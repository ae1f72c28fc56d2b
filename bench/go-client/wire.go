package main

// The few v2 KMS messages, encoded by hand on bench/gopath/src/kmswire.

import (
	"google.golang.org/protobuf/encoding/protowire"

	"kmswire"
)

const (
	methodStatus  = "/v2.KeyManagementService/Status"
	methodEncrypt = "/v2.KeyManagementService/Encrypt"
	methodDecrypt = "/v2.KeyManagementService/Decrypt"
)

// appendAnnotations encodes a map<string, bytes> as repeated entry messages.
func appendAnnotations(b []byte, num protowire.Number, m map[string][]byte) []byte {
	for k, v := range m {
		var e []byte
		e = kmswire.AppendString(e, 1, k)
		e = kmswire.AppendBytes(e, 2, v)
		b = kmswire.AppendBytes(b, num, e)
	}
	return b
}

func parseMapEntry(b []byte) (string, []byte, error) {
	var k string
	var v []byte
	err := kmswire.EachLenField(b, func(num protowire.Number, x []byte) error {
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
	b = kmswire.AppendBytes(b, 1, plaintext)
	b = kmswire.AppendString(b, 2, uid)
	return b
}

type encryptResponse struct {
	Ciphertext  []byte
	KeyID       string
	Annotations map[string][]byte
}

func decodeEncryptResponse(b []byte) (encryptResponse, error) {
	var r encryptResponse
	err := kmswire.EachLenField(b, func(num protowire.Number, v []byte) error {
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
	b = kmswire.AppendBytes(b, 1, ciphertext)
	b = kmswire.AppendString(b, 2, uid)
	b = kmswire.AppendString(b, 3, keyID)
	return appendAnnotations(b, 4, ann)
}

func decodeDecryptResponse(b []byte) ([]byte, error) {
	var pt []byte
	err := kmswire.EachLenField(b, func(num protowire.Number, v []byte) error {
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
	err := kmswire.EachLenField(b, func(num protowire.Number, v []byte) error {
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

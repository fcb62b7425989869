package image

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

func TestFastGunzip(t *testing.T) {
	plain := fakeTar(t, fakeEntry{name: "a", body: "hello"})
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(plain)
	zw.Close()
	for _, tc := range []struct {
		desc string
		in   []byte
		want []byte
	}{
		{"gzip", gz.Bytes(), plain},
		{"gzip with padding", append(append([]byte(nil), gz.Bytes()...), make([]byte, 1000)...), plain},
		{"plain", plain, plain},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			sum := sha256.Sum256(tc.in)
			h := v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}
			vr, err := newVerifyReader(io.NopCloser(bytes.NewReader(tc.in)), "blob", h, int64(len(tc.in)))
			if err != nil {
				t.Fatal(err)
			}
			rc, err := fastGunzip(vr)
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(rc)
			if err != nil {
				t.Fatal(err)
			}
			if err := rc.Close(); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, tc.want) {
				t.Errorf("got %d bytes, want %d", len(got), len(tc.want))
			}
			// Close read the padding: the blob was verified whole.
			if err := vr.checkDone(); err != nil {
				t.Error(err)
			}
		})
	}
	// Corrupt data fails with a gzip error.
	bad := append([]byte(nil), gz.Bytes()...)
	bad[len(bad)-5] ^= 0xff
	rc, err := fastGunzip(io.NopCloser(bytes.NewReader(bad)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadAll(rc); err == nil {
		t.Error("corrupt gzip: no error")
	}
}

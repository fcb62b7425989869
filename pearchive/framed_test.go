package pearchive

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestFramedRoundTrip(t *testing.T) {
	for _, tt := range []struct {
		name          string
		json, archive []byte
	}{
		{"both", []byte(`{"cmd":["ls"]}`), vector},
		{"no archive", []byte(`{}`), nil},
		{"empty json", nil, vector},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			if err := WriteFramed(&buf, tt.json, bytes.NewReader(tt.archive)); err != nil {
				t.Fatal(err)
			}
			if got, want := int64(buf.Len()), FramedLen(len(tt.json), int64(len(tt.archive))); got != want {
				t.Fatalf("framed length %d, FramedLen says %d", got, want)
			}
			j, a, err := SplitFramed(buf.Bytes())
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(string(tt.json), string(j)); diff != "" {
				t.Errorf("json (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(string(tt.archive), string(a)); diff != "" {
				t.Errorf("archive (-want +got):\n%s", diff)
			}
		})
	}
}

func TestWriteFramedNilArchive(t *testing.T) {
	var buf bytes.Buffer
	if err := WriteFramed(&buf, []byte("{}"), nil); err != nil {
		t.Fatal(err)
	}
	if want := []byte{2, 0, 0, 0, '{', '}'}; !bytes.Equal(buf.Bytes(), want) {
		t.Errorf("got %x, want %x", buf.Bytes(), want)
	}
}

func TestSplitFramedErrors(t *testing.T) {
	for _, tt := range []struct {
		name string
		body []byte
		want string
	}{
		{"empty", nil, "framed body of 0 bytes is shorter than its 4-byte JSON length"},
		{"short prefix", []byte{1, 0}, "framed body of 2 bytes"},
		{"length exceeds body", []byte{5, 0, 0, 0, '{', '}'}, "JSON length 5 exceeds the 2 bytes after the length"},
		{"huge length", []byte{0xff, 0xff, 0xff, 0xff}, "JSON length 4294967295 exceeds the 0 bytes"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := SplitFramed(tt.body)
			var fe *FormatError
			if !errors.As(err, &fe) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want a *FormatError containing %q", err, tt.want)
			}
		})
	}
}

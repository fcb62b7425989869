package guest

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestFrameRoundTrip(t *testing.T) {
	frames := []Frame{
		{Type: FrameStdout, Payload: []byte("hello\n")},
		{Type: FrameStderr, Payload: bytes.Repeat([]byte{0xff}, StreamMaxPayload)},
		{Type: FrameStarted, Payload: []byte{}},
		{Type: FrameEnd, Payload: []byte{}},
		CreditFrame(FrameStdinCredit, 65536),
		{Type: FrameStdin, Payload: []byte("y\n")},
		{Type: FrameStdinEOF, Payload: []byte{}},
		WindowSizeFrame(WindowSize{Rows: 24, Cols: 80}),
		SignalFrame(15),
		CreditFrame(FrameOutputCredit, 1),
	}
	var guestSent, hostSent bytes.Buffer
	for _, f := range frames {
		w := &guestSent
		if f.Type.FromHost() {
			w = &hostSent
		}
		if err := WriteFrame(w, f); err != nil {
			t.Fatalf("WriteFrame(%v): %v", f.Type, err)
		}
	}
	var got []Frame
	for _, side := range []struct {
		b        *bytes.Buffer
		fromHost bool
	}{{&guestSent, false}, {&hostSent, true}} {
		r := NewFrameReader(side.b, side.fromHost)
		for {
			f, err := r.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("Next: %v", err)
			}
			got = append(got, Frame{Type: f.Type, Payload: bytes.Clone(f.Payload)})
		}
	}
	if diff := cmp.Diff(frames, got); diff != "" {
		t.Errorf("frames read back (-sent +read):\n%s", diff)
	}
	if got := frames[7].WindowSize(); got != (WindowSize{24, 80}) {
		t.Errorf("WindowSize = %v", got)
	}
	if frames[8].Signal() != 15 || frames[9].Credit() != 1 {
		t.Errorf("Signal, Credit = %d, %d", frames[8].Signal(), frames[9].Credit())
	}
}

func TestFrameCheck(t *testing.T) {
	for _, tc := range []struct {
		name string
		f    Frame
		want string // "" for valid
	}{
		{"empty data", Frame{Type: FrameStdout}, "stdout frame of 0 bytes"},
		{"data too long", Frame{Type: FrameStdin, Payload: make([]byte, StreamMaxPayload+1)}, "stdin frame of 32769 bytes"},
		{"unknown", Frame{Type: 0x42}, "unknown type 0x42"},
		{"started with payload", Frame{Type: FrameStarted, Payload: []byte{1}}, "started frame of 1 bytes, want 0"},
		{"zero credit", CreditFrame(FrameOutputCredit, 0), "output-credit of 0 bytes"},
		{"short credit", Frame{Type: FrameStdinCredit, Payload: []byte{1, 0}}, "want 4"},
		{"signal 0", SignalFrame(0), "signal 0"},
		{"signal 65", SignalFrame(65), "signal 65"},
		{"signal 64", SignalFrame(64), ""},
		{"no columns", WindowSizeFrame(WindowSize{Rows: 3}), "window size 3x0"},
		{"stdin eof", Frame{Type: FrameStdinEOF}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.f.Check()
			if tc.want == "" {
				if err != nil {
					t.Fatalf("Check: %v", err)
				}
				return
			}
			if err == nil || !errors.Is(err, ErrBadFrame) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Check = %v, want ErrBadFrame with %q", err, tc.want)
			}
			if _, err := AppendFrame(nil, tc.f); err == nil {
				t.Errorf("AppendFrame took a bad frame")
			}
		})
	}
}

func TestFrameReaderErrors(t *testing.T) {
	le := func(n uint32) string { return string([]byte{byte(n), byte(n >> 8), byte(n >> 16), byte(n >> 24)}) }
	for _, tc := range []struct {
		name     string
		in       string
		fromHost bool
		want     error
		text     string
	}{
		{"empty", "", false, io.EOF, ""},
		{"short header", "\x01\x05", false, io.ErrUnexpectedEOF, ""},
		{"short payload", "\x01" + le(5) + "abc", false, io.ErrUnexpectedEOF, ""},
		{"wrong way to the host", "\x81" + le(1) + "x", false, ErrBadFrame, "wrong way"},
		{"wrong way to the guest", "\x01" + le(1) + "x", true, ErrBadFrame, "wrong way"},
		{"huge length", "\x01" + le(0xffffffff), false, ErrBadFrame, "4294967295 bytes"},
		{"unknown type", "\x7f" + le(3) + "abc", false, ErrBadFrame, "unknown type 0x7f"},
		{"forged end with payload", "\x04" + le(4) + "exit", false, ErrBadFrame, "end frame of 4 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := NewFrameReader(strings.NewReader(tc.in), tc.fromHost).Next()
			if !errors.Is(err, tc.want) || !strings.Contains(errString(err), tc.text) {
				t.Fatalf("Next = %v, want %v with %q", err, tc.want, tc.text)
			}
		})
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// FuzzFrameReader feeds the reader arbitrary bytes from either side: it
// never panics, never returns a frame that breaks the format, and each
// frame it returns encodes back to the bytes it was read from.
func FuzzFrameReader(f *testing.F) {
	var b []byte
	b, _ = AppendFrame(b, Frame{Type: FrameStdout, Payload: []byte("hi\n")})
	b, _ = AppendFrame(b, Frame{Type: FrameStarted})
	b, _ = AppendFrame(b, CreditFrame(FrameStdinCredit, 4096))
	f.Add(b, false)
	var h []byte
	h, _ = AppendFrame(h, CreditFrame(FrameOutputCredit, 1<<18))
	h, _ = AppendFrame(h, WindowSizeFrame(WindowSize{Rows: 50, Cols: 132}))
	h, _ = AppendFrame(h, SignalFrame(2))
	h, _ = AppendFrame(h, Frame{Type: FrameStdinEOF})
	f.Add(h, true)
	f.Add([]byte("\x01\xff\xff\xff\xff"), false)
	f.Fuzz(func(t *testing.T, in []byte, fromHost bool) {
		r := NewFrameReader(bytes.NewReader(in), fromHost)
		off := 0
		for {
			fr, err := r.Next()
			if err != nil {
				return
			}
			if fr.Type.FromHost() != fromHost {
				t.Fatalf("frame %v read from the wrong side", fr.Type)
			}
			if err := fr.Check(); err != nil {
				t.Fatalf("Next returned a bad frame: %v", err)
			}
			enc, err := AppendFrame(nil, fr)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(enc, in[off:off+len(enc)]) {
				t.Fatalf("frame at %d re-encodes differently", off)
			}
			off += len(enc)
		}
	})
}

package s3

import (
	"bytes"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// fakeMultipart is an S3 multipart endpoint that records what a client
// does with it: the most parts in flight at once, the part list of the
// Complete call, aborts, and injected failures.
type fakeMultipart struct {
	mu            sync.Mutex
	inFlight, max int
	parts         map[int][]byte
	completed     []CompletedPart
	aborted       atomic.Int32
	failPart      int // answer 400 to this part number
	completeFails int // answer this many Completes with 200 + InternalError
}

func (f *fakeMultipart) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	switch {
	case r.Method == http.MethodPost && q.Has("uploads"):
		io.WriteString(w, `<InitiateMultipartUploadResult><UploadId>U1</UploadId></InitiateMultipartUploadResult>`)
	case r.Method == http.MethodPut && q.Get("uploadId") == "U1":
		n, _ := strconv.Atoi(q.Get("partNumber"))
		body, _ := io.ReadAll(r.Body)
		f.mu.Lock()
		f.inFlight++
		f.max = max(f.max, f.inFlight)
		f.mu.Unlock()
		time.Sleep(30 * time.Millisecond)
		f.mu.Lock()
		f.inFlight--
		f.parts[n] = body
		f.mu.Unlock()
		if n == f.failPart {
			w.WriteHeader(http.StatusBadRequest)
			io.WriteString(w, `<Error><Code>InvalidPart</Code><Message>part refused</Message></Error>`)
			return
		}
		w.Header().Set("ETag", fmt.Sprintf(`"etag-%d"`, n))
	case r.Method == http.MethodPost && q.Get("uploadId") == "U1":
		f.mu.Lock()
		defer f.mu.Unlock()
		if f.completeFails > 0 {
			f.completeFails--
			io.WriteString(w, "\n  \n<Error><Code>InternalError</Code><Message>try again</Message></Error>")
			return
		}
		var req struct {
			Parts []CompletedPart `xml:"Part"`
		}
		xml.NewDecoder(r.Body).Decode(&req)
		f.completed = req.Parts
		io.WriteString(w, `<CompleteMultipartUploadResult><ETag>"whole-3"</ETag></CompleteMultipartUploadResult>`)
	case r.Method == http.MethodDelete && q.Get("uploadId") == "U1":
		f.aborted.Add(1)
		w.WriteHeader(http.StatusNoContent)
	default:
		http.Error(w, "unexpected "+r.Method+" "+r.URL.String(), http.StatusTeapot)
	}
}

func TestUploadPartsBoundedAndOrdered(t *testing.T) {
	for _, tc := range []struct {
		name          string
		concurrency   int
		failPart      int
		completeFails int
		wantErr       bool
	}{
		{name: "one at a time", concurrency: 1},
		{name: "three at a time", concurrency: 3},
		{name: "Complete answers 200 with an error once", concurrency: 2, completeFails: 1},
		{name: "a part is refused", concurrency: 2, failPart: 4, wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &fakeMultipart{parts: map[int][]byte{}, failPart: tc.failPart, completeFails: tc.completeFails}
			srv := httptest.NewServer(f)
			defer srv.Close()
			c, err := New(Config{Endpoint: srv.URL, AccessKeyID: "AK", SecretAccessKey: "SK", PathStyle: true}, Options{})
			if err != nil {
				t.Fatal(err)
			}
			data := randomBytes(t, 7*MinPartSize+5)
			etag, err := c.Upload(t.Context(), "bucket", "key", bytes.NewReader(data),
				UploadOptions{PartSize: MinPartSize, Concurrency: tc.concurrency})
			if tc.wantErr {
				var e *Error
				if !errors.As(err, &e) || e.Code != "InvalidPart" || f.aborted.Load() != 1 {
					t.Fatalf("Upload with part %d refused: err %v, %d aborts; want InvalidPart and 1 abort", tc.failPart, err, f.aborted.Load())
				}
				return
			}
			if err != nil {
				t.Fatalf("Upload: %v", err)
			}
			if etag != `"whole-3"` || f.aborted.Load() != 0 {
				t.Errorf("ETag %s, %d aborts", etag, f.aborted.Load())
			}
			if f.max > tc.concurrency {
				t.Errorf("%d parts in flight at once; the bound is %d", f.max, tc.concurrency)
			}
			if tc.concurrency > 1 && f.max < 2 {
				t.Errorf("parts never overlapped (at most %d in flight) with concurrency %d", f.max, tc.concurrency)
			}
			var want []CompletedPart
			var joined []byte
			for n := 1; n <= 8; n++ {
				want = append(want, CompletedPart{PartNumber: n, ETag: fmt.Sprintf(`"etag-%d"`, n)})
				joined = append(joined, f.parts[n]...)
			}
			if diff := cmp.Diff(want, f.completed); diff != "" {
				t.Errorf("Complete's part list (-want +got):\n%s", diff)
			}
			if !bytes.Equal(joined, data) {
				t.Errorf("the parts joined are not the data uploaded")
			}
		})
	}
}

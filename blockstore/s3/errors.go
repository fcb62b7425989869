package s3

import (
	"bytes"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
)

// Sentinel errors; an *Error matches the ones that describe it through
// errors.Is.
var (
	// ErrNotFound: the key or the bucket does not exist (404, NoSuchKey,
	// NoSuchBucket, NoSuchUpload).
	ErrNotFound = errors.New("not found")
	// ErrAccessDenied: the server refused our credentials or signature (403).
	ErrAccessDenied = errors.New("access denied")
	// ErrThrottled: the server asked us to slow down (503 SlowDown, 429);
	// retrying later is right.
	ErrThrottled = errors.New("throttled")
	// ErrInvalidRange: a ranged read starts at or past the object's end (416).
	ErrInvalidRange = errors.New("range not satisfiable")
	// ErrExists: a conditional write (PutOptions.IfNoneMatch) found the key
	// already there (412).
	ErrExists = errors.New("already exists")
)

// maxErrorBody bounds how much of an error response is read: S3's XML
// errors are a few hundred bytes, and a misconfigured endpoint may answer
// with an arbitrarily large HTML page.
const maxErrorBody = 64 << 10

// maxField bounds each field kept from an error body, so a hostile server
// cannot make our error messages huge.
const maxField = 512

// Error is a failed S3 request: the server's status and, when it sent one,
// the code and message of its XML error body.
type Error struct {
	Op         string // "GetObject", "PutObject", …
	Bucket     string
	Key        string
	Endpoint   string // the server's base URL, for messages
	StatusCode int
	Code       string // S3's error code, e.g. NoSuchKey, SignatureDoesNotMatch
	Message    string
	RequestID  string
	// Anonymous is true when the request went out unsigned (no credentials
	// configured), which changes the advice for a 403.
	Anonymous bool
}

// Error describes the failure; for 403 it says which bucket and endpoint
// refused and what to check.
func (e *Error) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "s3: %s", e.Op)
	if e.Bucket != "" {
		fmt.Fprintf(&b, " s3://%s/%s", e.Bucket, e.Key)
	}
	fmt.Fprintf(&b, " at %s: ", e.Endpoint)
	switch {
	case errors.Is(e, ErrAccessDenied):
		fmt.Fprintf(&b, "access denied to bucket %q", e.Bucket)
	case errors.Is(e, ErrNotFound):
		b.WriteString("not found")
	case errors.Is(e, ErrThrottled):
		b.WriteString("throttled by the server")
	case errors.Is(e, ErrExists):
		b.WriteString("already exists")
	default:
		b.WriteString("request failed")
	}
	fmt.Fprintf(&b, " (HTTP %d", e.StatusCode)
	if e.Code != "" {
		fmt.Fprintf(&b, " %s", e.Code)
	}
	if e.Message != "" {
		fmt.Fprintf(&b, ": %s", e.Message)
	}
	b.WriteString(")")
	switch {
	case e.Code == "RequestTimeTooSkewed":
		b.WriteString("; this machine's clock differs too much from the server's: fix the clock")
	case e.Code == "AuthorizationHeaderMalformed" || e.Code == "PermanentRedirect" || e.Code == "IllegalLocationConstraintException":
		b.WriteString("; the bucket is in another region: set AWS_REGION (or the profile's region) to it")
	case errors.Is(e, ErrAccessDenied):
		if e.Anonymous {
			b.WriteString("; no credentials are configured: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)")
		} else {
			b.WriteString("; check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or the AWS_PROFILE's keys) and that they may use this bucket")
		}
	}
	return b.String()
}

// Is matches the sentinel errors that describe e.
func (e *Error) Is(target error) bool {
	switch target {
	case ErrNotFound:
		return e.StatusCode == http.StatusNotFound ||
			e.Code == "NoSuchKey" || e.Code == "NoSuchBucket" || e.Code == "NoSuchUpload"
	case ErrAccessDenied:
		return e.StatusCode == http.StatusForbidden
	case ErrThrottled:
		return e.Code == "SlowDown" || e.StatusCode == http.StatusTooManyRequests ||
			e.StatusCode == http.StatusServiceUnavailable
	case ErrExists:
		return e.StatusCode == http.StatusPreconditionFailed
	case ErrInvalidRange:
		return e.StatusCode == http.StatusRequestedRangeNotSatisfiable || e.Code == "InvalidRange"
	}
	return false
}

// Retriable reports whether trying the same request again may succeed: the
// server was throttling or failed internally (5xx), not refusing it.
func (e *Error) Retriable() bool {
	return errors.Is(e, ErrThrottled) || e.StatusCode >= 500 || e.Code == "RequestTimeout" ||
		e.Code == "InternalError" || e.Code == "ServiceUnavailable"
}

// IsRetriable reports whether err is an S3 error worth retrying.
func IsRetriable(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Retriable()
}

// xmlError is S3's error body.
type xmlError struct {
	XMLName   xml.Name `xml:"Error"`
	Code      string   `xml:"Code"`
	Message   string   `xml:"Message"`
	RequestID string   `xml:"RequestId"`
}

// parseErrorBody reads at most maxErrorBody bytes of an error response and
// returns the S3 error code, message and request id it holds. A body that is
// not an S3 XML error (empty, HTML, truncated) yields empty fields: the
// status code still tells what happened.
func parseErrorBody(r io.Reader) (code, message, requestID string) {
	data, _ := io.ReadAll(io.LimitReader(r, maxErrorBody))
	data = bytes.TrimSpace(data)
	if len(data) == 0 {
		return "", "", ""
	}
	var x xmlError
	if err := xml.Unmarshal(data, &x); err != nil {
		return "", "", ""
	}
	return clean(x.Code), clean(x.Message), clean(x.RequestID)
}

// clean makes a server-supplied string safe and short for an error message:
// control characters dropped, at most maxField bytes.
func clean(s string) string {
	s = strings.TrimSpace(s)
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || r == '\uFFFD' {
			return -1
		}
		return r
	}, s)
	if len(s) > maxField {
		cut := maxField
		for cut > 0 && s[cut]&0xC0 == 0x80 { // do not split a UTF-8 sequence
			cut--
		}
		s = s[:cut] + "…"
	}
	return s
}

// readFull reads into buf until it is full or the reader ends, returning
// how many bytes it read; the end of the reader is not an error.
func readFull(r io.Reader, buf []byte) (int, error) {
	n, err := io.ReadFull(r, buf)
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		err = nil
	}
	return n, err
}

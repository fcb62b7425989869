package s3

import (
	"strings"
	"testing"
	"unicode/utf8"
)

// The seed corpora live in testdata/fuzz/<target>/; `make fuzz` runs these.

func FuzzParseINI(f *testing.F) {
	f.Add([]byte("[default]\naws_access_key_id = AK\naws_secret_access_key = SK\n"))
	f.Add([]byte("[profile x]\ns3 =\n  endpoint_url = http://h:1\n  addressing_style = path\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		ini, err := parseINI("fuzz", data)
		if err != nil {
			if ini != nil {
				t.Fatalf("error %v with a result", err)
			}
			return
		}
		for sec, kv := range ini {
			if sec == "" || strings.ContainsAny(sec, "\n") {
				t.Fatalf("bad section name %q", sec)
			}
			for k, v := range kv {
				if k == "" || strings.ContainsAny(k+v, "\n") {
					t.Fatalf("bad entry %q = %q", k, v)
				}
			}
		}
	})
}

func FuzzParseErrorBody(f *testing.F) {
	f.Add([]byte(`<?xml version="1.0" encoding="UTF-8"?><Error><Code>NoSuchKey</Code><Message>The specified key does not exist.</Message><Key>k</Key><RequestId>R</RequestId></Error>`))
	f.Add([]byte("<html><body>502 Bad Gateway</body></html>"))
	f.Add([]byte(""))
	f.Fuzz(func(t *testing.T, data []byte) {
		code, msg, id := parseErrorBody(strings.NewReader(string(data)))
		for _, s := range []string{code, msg, id} {
			if len(s) > maxField+len("…") || !utf8.ValidString(s) || strings.ContainsFunc(s, func(r rune) bool { return r < 0x20 }) {
				t.Fatalf("field %q is not short, clean text", s)
			}
		}
		e := &Error{Op: "GetObject", Bucket: "b", Key: "k", Endpoint: "http://h", StatusCode: 403, Code: code, Message: msg, RequestID: id}
		if !strings.Contains(e.Error(), `bucket "b"`) {
			t.Fatalf("message %q does not name the bucket", e.Error())
		}
	})
}

func FuzzParseListPage(f *testing.F) {
	f.Add([]byte(`<?xml version="1.0" encoding="UTF-8"?><ListBucketResult><Name>b</Name><Prefix>p/</Prefix><KeyCount>1</KeyCount><IsTruncated>true</IsTruncated><NextContinuationToken>t1</NextContinuationToken><Contents><Key>p/a</Key><Size>5</Size><ETag>"e"</ETag><LastModified>2026-12-06T08:00:00.000Z</LastModified></Contents></ListBucketResult>`))
	f.Add([]byte(`<ListBucketResult><IsTruncated>false</IsTruncated></ListBucketResult>`))
	f.Fuzz(func(t *testing.T, data []byte) {
		page, err := parseListPage(strings.NewReader(string(data)))
		if err != nil {
			return
		}
		if page.IsTruncated && page.NextContinuationToken == "" {
			t.Fatal("truncated page without a token accepted")
		}
		for _, o := range page.Contents {
			if o.Key == "" || o.Size < 0 {
				t.Fatalf("entry %+v accepted", o)
			}
		}
	})
}

func FuzzParseContentRange(f *testing.F) {
	f.Add("bytes 0-1023/4096")
	f.Add("bytes 5-9/*")
	f.Add("bytes 9-5/10")
	f.Fuzz(func(t *testing.T, v string) {
		start, end, size, err := parseContentRange(v)
		if err != nil {
			return
		}
		if start < 0 || end < start || (size != -1 && size <= end) {
			t.Fatalf("%q parsed as %d-%d/%d", v, start, end, size)
		}
	})
}

func FuzzParseUploadsPage(f *testing.F) {
	f.Add([]byte(`<?xml version="1.0" encoding="UTF-8"?><ListMultipartUploadsResult><Bucket>b</Bucket><KeyMarker></KeyMarker><UploadIdMarker></UploadIdMarker><NextKeyMarker>k</NextKeyMarker><NextUploadIdMarker>u1</NextUploadIdMarker><MaxUploads>1000</MaxUploads><IsTruncated>true</IsTruncated><Upload><Key>k</Key><UploadId>u1</UploadId><Initiated>2026-12-06T08:00:00.000Z</Initiated></Upload></ListMultipartUploadsResult>`))
	f.Add([]byte(`<ListMultipartUploadsResult><IsTruncated>false</IsTruncated></ListMultipartUploadsResult>`))
	f.Fuzz(func(t *testing.T, data []byte) {
		page, err := parseUploadsPage(strings.NewReader(string(data)))
		if err != nil {
			return
		}
		if page.IsTruncated && page.NextKeyMarker == "" {
			t.Fatal("truncated page without a marker accepted")
		}
		for _, u := range page.Uploads {
			if u.Key == "" || u.UploadID == "" || len(u.UploadID) > 1024 {
				t.Fatalf("entry %+v accepted", u)
			}
		}
	})
}

func FuzzParsePartsPage(f *testing.F) {
	f.Add([]byte(`<?xml version="1.0" encoding="UTF-8"?><ListPartsResult><Bucket>b</Bucket><Key>k</Key><UploadId>u</UploadId><PartNumberMarker>0</PartNumberMarker><NextPartNumberMarker>2</NextPartNumberMarker><MaxParts>2</MaxParts><IsTruncated>true</IsTruncated><Part><PartNumber>1</PartNumber><LastModified>2026-12-06T08:00:00.000Z</LastModified><ETag>"5d41402abc4b2a76b9719d911017c592"</ETag><Size>5242880</Size></Part><Part><PartNumber>2</PartNumber><ETag>"e"</ETag><Size>5242880</Size></Part></ListPartsResult>`), 0)
	f.Add([]byte(`<ListPartsResult><IsTruncated>false</IsTruncated></ListPartsResult>`), 7)
	f.Fuzz(func(t *testing.T, data []byte, marker int) {
		page, err := parsePartsPage(strings.NewReader(string(data)), marker)
		if err != nil {
			return
		}
		if page.IsTruncated && page.NextPartNumberMarker <= marker {
			t.Fatalf("truncated page after %d with marker %d accepted", marker, page.NextPartNumberMarker)
		}
		for _, p := range page.Parts {
			if p.PartNumber < 1 || p.PartNumber > MaxParts || p.Size < 0 || p.Size > MaxPartSize {
				t.Fatalf("part %+v accepted", p)
			}
		}
	})
}

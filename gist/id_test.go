package gist_test

import (
	"testing"

	"github.com/pe-project/pe/gist"
)

func TestParseID(t *testing.T) {
	const (
		id  = "aa5a315d61ae9438b18d"
		rev = "57a7f021a713b1c5a6a199b54cc514735d2d462f"
	)
	for _, tt := range []struct {
		in, id, rev string
	}{
		{id, id, ""},
		{" " + id + "\n", id, ""},
		{"AA5A315D61AE9438B18D", id, ""},
		{"4636655", "4636655", ""},
		{id + "/" + rev, id, rev},
		{"octocat/" + id, id, ""},
		{"https://gist.github.com/octocat/" + id, id, ""},
		{"https://gist.github.com/octocat/" + id + "#file-main-sh", id, ""},
		{"https://gist.github.com/octocat/" + id + ".git", id, ""},
		{"gist.github.com/octocat/" + id, id, ""},
		{"https://gist.github.com/" + id, id, ""},
		{"https://gist.github.com/" + id + "/" + rev, id, rev},
		{"https://gist.github.com/octocat/" + id + "/" + rev, id, rev},
		{"https://gist.github.com/octocat/" + id + "/revisions", id, ""},
		{"https://gist.github.com/octocat/" + id + "/raw/" + rev + "/main.sh", id, rev},
		{"https://gist.githubusercontent.com/octocat/" + id + "/raw/" + rev + "/main.sh", id, rev},
		{"https://api.github.com/gists/" + id, id, ""},
		{"https://api.github.com/gists/" + id + "/" + rev, id, rev},
		{"https://ghe.example.com/api/v3/gists/" + id + "/" + rev, id, rev},
		{"https://programexplorer.org/#gist=" + id, id, ""},
		{"https://pe.example/#more=x&gist=" + id + "/" + rev, id, rev},
		{"http://127.0.0.1:8080/#gist=" + id + "%2F" + rev, id, rev},
		{"#gist=" + id + "/" + rev, id, rev},
	} {
		gotID, gotRev, err := gist.ParseID(tt.in)
		if err != nil || gotID != tt.id || gotRev != tt.rev {
			t.Errorf("ParseID(%q) = %q, %q, %v; want %q, %q", tt.in, gotID, gotRev, err, tt.id, tt.rev)
		}
	}
	for _, in := range []string{
		"", "not-a-gist", "../../etc/passwd", id + "/57a7f02", id + "/" + rev + "/x",
		"https://gist.github.com/", "https://gist.github.com/octocat", "https://api.github.com/gists/zz",
		"https://example.com/#s=abc", "#gist=", "#gist=../x", "octo cat/" + id, "/" + id,
		id + "\x00",
	} {
		if gotID, gotRev, err := gist.ParseID(in); err == nil {
			t.Errorf("ParseID(%q) = %q, %q, want an error", in, gotID, gotRev)
		}
	}
}

package cli

import (
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/spf13/pflag"
)

// TestSizeFlags sets the typed flags as the command line does and checks
// the value each holds or the message it refuses with.
func TestSizeFlags(t *testing.T) {
	type result struct {
		Bytes int64
		MiB   int
		CPUs  int
		Size  string // --max-size as written
		SizeN int64  // and in bytes
		Err   string
	}
	for _, tt := range []struct {
		args []string
		want result
	}{
		{nil, result{Bytes: 512 << 20, MiB: 512, CPUs: 1}},
		{[]string{"--memory", "100000000"}, result{Bytes: 1e8, MiB: 96, CPUs: 1}},
		{[]string{"--memory", "64MiB", "--cpus", "255"}, result{Bytes: 64 << 20, MiB: 64, CPUs: 255}},
		{[]string{"--memory", "1M"}, result{Err: "--memory 1M: want at least 64MiB"}},
		{[]string{"--memory", "lots"}, result{Err: `--memory "lots": want a size such as 512M or 1GiB`}},
		{[]string{"--cpus", "0"}, result{Err: "--cpus 0: want 1 to 255"}},
		{[]string{"--cpus", "256"}, result{Err: "--cpus 256: want 1 to 255"}},
		{[]string{"--cpus", "one"}, result{Err: `--cpus "one": want a number of vCPUs, 1 to 255`}},
		{[]string{"--max-size", "2GiB"}, result{Bytes: 512 << 20, MiB: 512, CPUs: 1, Size: "2GiB", SizeN: 2 << 30}},
		{[]string{"--max-size", ""}, result{Bytes: 512 << 20, MiB: 512, CPUs: 1}},
		{[]string{"--max-size", "0"}, result{Err: "--max-size 0: use --all to remove every image"}},
	} {
		fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
		var (
			mem     memoryFlag
			cpus    cpusFlag
			maxSize sizeFlag
		)
		memoryVar(fs, &mem, "")
		cpusVar(fs, &cpus, "")
		sizeVar(fs, &maxSize, "max-size", "", sizeSpec{min: 1, want: "a size such as 20GiB", small: "use --all to remove every image", allowEmpty: true}, "")
		var got result
		if err := fs.Parse(tt.args); err != nil {
			var fe *flagValueError
			if !errors.As(err, &fe) {
				t.Errorf("%q: %v is not a flagValueError", tt.args, err)
				continue
			}
			got.Err = fe.Error()
		} else {
			got = result{Bytes: mem.Bytes(), MiB: mem.MiB(), CPUs: int(cpus), Size: maxSize.String(), SizeN: maxSize.Bytes()}
		}
		if diff := cmp.Diff(tt.want, got); diff != "" {
			t.Errorf("%q (-want +got):\n%s", tt.args, diff)
		}
	}
}

package cli

import (
	"fmt"
	"strconv"

	"github.com/spf13/pflag"

	"github.com/pe-project/pe/internal/units"
)

// The size and VM-limit flags are typed values (pflag.Value): each checks
// its value once, when the flag (or the environment, or the config file)
// sets it, with one message format, instead of every command parsing and
// bounding strings in its RunE. The size syntax itself is
// units.ParseSize, the same as pe.toml's.

// flagValueError is a value a flag refused, its message already naming the
// flag and the value ("--memory 1M: want at least 64MiB"). The root
// command's flag error function shows it as it is, without pflag's
// "invalid argument ... for ... flag" around it.
type flagValueError struct{ msg string }

func (e *flagValueError) Error() string { return e.msg }

// sizeFlag is a flag holding a size in bytes, written in pe's size syntax.
type sizeFlag struct {
	name string // the flag's name, for messages
	text string // the value as written (String, the default in --help)
	n    int64  // the value in bytes (0 when empty, see allowEmpty)
	// min is the smallest size allowed; want says what to write ("a size
	// such as 1MiB"); small is the message for a size under min.
	min         int64
	want, small string
	// allowEmpty lets "" mean "not set" (for flags whose default is "").
	allowEmpty bool
}

// sizeSpec is what a size flag accepts.
type sizeSpec struct {
	min         int64
	want, small string
	allowEmpty  bool
}

// sizeVar defines a size flag with default def, which must be valid.
func sizeVar(fs *pflag.FlagSet, p *sizeFlag, name, def string, spec sizeSpec, usage string) {
	*p = sizeFlag{name: name, min: spec.min, want: spec.want, small: spec.small, allowEmpty: spec.allowEmpty}
	if err := p.Set(def); err != nil {
		panic(fmt.Sprintf("flag --%s: default %q: %v", name, def, err))
	}
	fs.Var(p, name, usage)
}

// Set implements pflag.Value.
func (f *sizeFlag) Set(s string) error {
	if s == "" && f.allowEmpty {
		f.text, f.n = "", 0
		return nil
	}
	n, err := units.ParseSize(s)
	if err != nil {
		return &flagValueError{fmt.Sprintf("--%s %q: want %s", f.name, s, f.want)}
	}
	if n < f.min {
		return &flagValueError{fmt.Sprintf("--%s %s: %s", f.name, s, f.small)}
	}
	f.text, f.n = s, n
	return nil
}

// String implements pflag.Value: the value as written.
func (f sizeFlag) String() string { return f.text }

// Type implements pflag.Value.
func (f *sizeFlag) Type() string { return "size" }

// Bytes returns the size in bytes (0 when empty).
func (f *sizeFlag) Bytes() int64 { return f.n }

// minMemory is the least memory a VM may have: less does not boot the
// guest kernel and its init.
const minMemory = 64 << 20

// memoryFlag is a VM's memory (--memory): a size of at least 64MiB,
// 512M by default.
type memoryFlag struct{ sizeFlag }

// memoryVar defines --memory.
func memoryVar(fs *pflag.FlagSet, p *memoryFlag, usage string) {
	sizeVar(fs, &p.sizeFlag, "memory", "512M", sizeSpec{min: minMemory, want: "a size such as 512M or 1GiB", small: "want at least 64MiB"}, usage)
}

// MiB returns the memory in MiB, rounded up.
func (f *memoryFlag) MiB() int { return int((f.n + 1<<20 - 1) >> 20) }

// maxCPUs is the most vCPUs a VM may have.
const maxCPUs = 255

// cpusFlag is a VM's vCPUs (--cpus): 1 to 255, 1 by default.
type cpusFlag int

// cpusVar defines --cpus.
func cpusVar(fs *pflag.FlagSet, p *cpusFlag, usage string) {
	*p = 1
	fs.Var(p, "cpus", usage)
}

// Set implements pflag.Value.
func (f *cpusFlag) Set(s string) error {
	n, err := strconv.Atoi(s)
	if err != nil {
		return &flagValueError{fmt.Sprintf("--cpus %q: want a number of vCPUs, 1 to %d", s, maxCPUs)}
	}
	if n < 1 || n > maxCPUs {
		return &flagValueError{fmt.Sprintf("--cpus %d: want 1 to %d", n, maxCPUs)}
	}
	*f = cpusFlag(n)
	return nil
}

// String implements pflag.Value.
func (f cpusFlag) String() string { return strconv.Itoa(int(f)) }

// Type implements pflag.Value.
func (f *cpusFlag) Type() string { return "int" }

// maxOutputSpec is --max-output's: at least one byte.
var maxOutputSpec = sizeSpec{min: 1, want: "a size such as 64KiB or 1MiB", small: "want a size of at least one byte, such as 64KiB or 1MiB"}

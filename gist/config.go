package gist

import (
	"errors"
	"fmt"
	"io/fs"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/BurntSushi/toml"

	"github.com/pe-project/pe/internal/units"
)

// ConfigName is the name of the file holding a gist's run settings.
const ConfigName = "pe.toml"

// MaxConfigSize bounds pe.toml: it holds a few settings, and the TOML
// decoder's memory grows with its input.
const MaxConfigSize = 64 << 10

// Config is a parsed pe.toml: how to run the files beside it.
type Config struct {
	// Image is the image reference. Required.
	Image string
	// Cmd is the command (nil: not set, the image's cmd is used).
	Cmd []string
	// Entrypoint replaces the image's entrypoint when not nil; a non-nil
	// empty slice clears it.
	Entrypoint []string
	// Env holds "NAME=VALUE" entries added to the image's environment, in
	// the order pe.toml gives them.
	Env []string
	// Stdin names the file (relative to the directory of pe.toml) given to
	// the program as standard input ("" for none).
	Stdin string
	// Timeout is the program's time limit (0: not set).
	Timeout time.Duration
	// Memory is the VM's memory, a size such as "512M" or "1GiB" ("": not
	// set). It has been checked with units.ParseSize.
	Memory string
	// Platform is the image platform, os/arch[/variant] ("": not set).
	Platform string
}

// ConfigError is a mistake in a pe.toml: the key it is about ("" when it
// is not about one key), its line (0 when unknown) and what is wrong.
type ConfigError struct {
	Key  string
	Line int
	Msg  string
}

// Error reads "pe.toml line N: KEY: what is wrong".
func (e *ConfigError) Error() string {
	var b strings.Builder
	b.WriteString(ConfigName)
	if e.Line > 0 {
		fmt.Fprintf(&b, " line %d", e.Line)
	}
	b.WriteString(": ")
	if e.Key != "" {
		b.WriteString(e.Key + ": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// configKeys are the keys pe.toml may hold, in the order the reference
// (docs/pe-toml.md) gives them.
var configKeys = []string{"image", "cmd", "entrypoint", "env", "stdin", "timeout", "memory", "platform"}

// ParseConfig parses a pe.toml. Errors are *ConfigError values naming the
// key and its line: TOML syntax errors, unknown keys, values of the wrong
// type, a missing image, a cmd with unbalanced quotes, and so on.
func ParseConfig(data []byte) (*Config, error) {
	if len(data) > MaxConfigSize {
		return nil, &ConfigError{Msg: fmt.Sprintf("%d bytes, more than the %d a pe.toml may have", len(data), MaxConfigSize)}
	}
	if !utf8.Valid(data) {
		// The decoder says so too, but with a less helpful message.
		return nil, &ConfigError{Msg: "not UTF-8 text"}
	}
	var raw map[string]any
	md, err := toml.Decode(string(data), &raw)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return nil, &ConfigError{Key: pe.LastKey, Line: pe.Position.Line, Msg: pe.Message}
		}
		return nil, &ConfigError{Msg: err.Error()}
	}
	p := &configParser{data: string(data), md: md}
	// Keys come in the order of the file, so the first mistake reported is
	// the first in the file.
	for _, k := range md.Keys() {
		if !slices.Contains(configKeys, k[0]) {
			return nil, p.errorf(k, "unknown key (pe.toml keys: %s)", strings.Join(configKeys, ", "))
		}
	}
	c := &Config{}
	for _, name := range configKeys {
		v, ok := raw[name]
		if !ok {
			continue
		}
		if err := p.set(c, name, v); err != nil {
			return nil, err
		}
	}
	if c.Image == "" {
		if _, ok := raw["image"]; ok {
			return nil, p.errorf(toml.Key{"image"}, "empty: want an image reference such as busybox")
		}
		return nil, &ConfigError{Key: "image", Msg: "missing: pe.toml must name the image, such as image = \"busybox\""}
	}
	return c, nil
}

// configParser holds what error messages need: the source for the lines
// of keys, the decoder's metadata for the types of values.
type configParser struct {
	data string
	md   toml.MetaData
}

// errorf returns a ConfigError about key k.
func (p *configParser) errorf(k toml.Key, format string, args ...any) *ConfigError {
	return &ConfigError{Key: k.String(), Line: keyLine(p.data, k), Msg: fmt.Sprintf(format, args...)}
}

// wrongType returns the error of a value of the wrong type.
func (p *configParser) wrongType(k toml.Key, want string) *ConfigError {
	return p.errorf(k, "want %s, not %s", want, article(p.md.Type(k...)))
}

// article names a TOML type with its article: "an integer".
func article(typ string) string {
	typ = strings.ToLower(typ)
	switch typ {
	case "":
		return "this value"
	case "inline table":
		return "an inline table"
	case "array", "integer":
		return "an " + typ
	}
	return "a " + typ
}

// set checks the value v of the top-level key name and stores it in c.
func (p *configParser) set(c *Config, name string, v any) error {
	k := toml.Key{name}
	switch name {
	case "image":
		s, ok := v.(string)
		if !ok {
			return p.wrongType(k, "a string")
		}
		s = strings.TrimSpace(s)
		if strings.ContainsAny(s, " \t\r\n\x00") {
			return p.errorf(k, "%q is not an image reference (it has spaces or control characters)", s)
		}
		c.Image = s
	case "cmd", "entrypoint":
		argv, err := p.argv(k, v)
		if err != nil {
			return err
		}
		if name == "cmd" {
			// An empty cmd is no cmd, as in the original's web page.
			if len(argv) > 0 {
				c.Cmd = argv
			}
		} else {
			c.Entrypoint = argv
		}
	case "env":
		env, err := p.env(k, v)
		if err != nil {
			return err
		}
		c.Env = env
	case "stdin":
		s, ok := v.(string)
		if !ok {
			return p.wrongType(k, "a string naming a file")
		}
		if s != "" && (!fs.ValidPath(s) || s == ".") {
			return p.errorf(k, "%q is not a file name beside pe.toml (no absolute names, no ..)", s)
		}
		c.Stdin = s
	case "timeout":
		switch t := v.(type) {
		case string:
			d, err := time.ParseDuration(strings.TrimSpace(t))
			if err != nil || d <= 0 {
				return p.errorf(k, "%q: want a positive duration such as \"10s\" or \"2m\"", t)
			}
			c.Timeout = d
		case int64:
			if t <= 0 || t > math.MaxInt64/int64(time.Second) {
				return p.errorf(k, "%d: want a positive number of seconds", t)
			}
			c.Timeout = time.Duration(t) * time.Second
		default:
			return p.wrongType(k, "a duration string such as \"10s\", or seconds")
		}
	case "memory":
		s, ok := v.(string)
		if !ok {
			return p.wrongType(k, "a size string such as \"512M\" or \"1GiB\"")
		}
		n, err := units.ParseSize(s)
		if err != nil || n <= 0 {
			return p.errorf(k, "%q: want a size such as \"512M\" or \"1GiB\"", s)
		}
		c.Memory = strings.TrimSpace(s)
	case "platform":
		s, ok := v.(string)
		if !ok {
			return p.wrongType(k, "a string such as \"linux/amd64\"")
		}
		if !validPlatform(s) {
			return p.errorf(k, "%q: want os/arch[/variant] such as \"linux/amd64\" or \"linux/arm64/v8\"", s)
		}
		c.Platform = s
	}
	return nil
}

// argv turns a cmd or entrypoint into an argument vector: a string is
// split as a POSIX shell would (quotes, backslashes; no expansions), an
// array of strings is taken as it is.
func (p *configParser) argv(k toml.Key, v any) ([]string, error) {
	switch t := v.(type) {
	case string:
		argv, err := SplitCommand(t)
		if err != nil {
			return nil, p.errorf(k, "%v", err)
		}
		return argv, nil
	case []any:
		argv := make([]string, 0, len(t))
		for i, e := range t {
			s, ok := e.(string)
			if !ok {
				return nil, p.errorf(k, "element %d: want a string, not %T", i, e)
			}
			if strings.IndexByte(s, 0) >= 0 {
				return nil, p.errorf(k, "element %d has a NUL byte", i)
			}
			argv = append(argv, s)
		}
		return argv, nil
	}
	return nil, p.wrongType(k, "a command string or an array of strings")
}

// env turns the env key into NAME=VALUE entries: a string holds lines
// (blank lines and lines starting with # are skipped), a table maps names
// to values.
func (p *configParser) env(k toml.Key, v any) ([]string, error) {
	var env []string
	switch t := v.(type) {
	case string:
		n := 0
		for line := range strings.Lines(t) {
			n++
			line = strings.TrimRight(strings.TrimLeft(line, " \t"), "\r\n")
			if line == "" || strings.HasPrefix(line, "#") {
				continue
			}
			name, _, ok := strings.Cut(line, "=")
			if !ok {
				return nil, p.errorf(k, "line %d of the value, %q, is not NAME=VALUE", n, line)
			}
			if err := checkEnvName(name); err != nil {
				return nil, p.errorf(k, "line %d of the value: %v", n, err)
			}
			if strings.IndexByte(line, 0) >= 0 {
				return nil, p.errorf(k, "line %d of the value has a NUL byte", n)
			}
			env = append(env, line)
		}
	case map[string]any:
		// The metadata lists the table's keys in the file's order.
		for _, key := range p.md.Keys() {
			if len(key) != 2 || key[0] != "env" {
				if len(key) > 2 && key[0] == "env" {
					return nil, p.errorf(key[:2], "want a string, not a table")
				}
				continue
			}
			name := key[1]
			if err := checkEnvName(name); err != nil {
				return nil, p.errorf(key, "%v", err)
			}
			var val string
			switch x := t[name].(type) {
			case string:
				val = x
			case int64:
				val = strconv.FormatInt(x, 10)
			case float64:
				val = strconv.FormatFloat(x, 'g', -1, 64)
			case bool:
				val = strconv.FormatBool(x)
			default:
				return nil, p.wrongType(key, "a string, number or boolean")
			}
			if strings.IndexByte(val, 0) >= 0 {
				return nil, p.errorf(key, "the value has a NUL byte")
			}
			env = append(env, name+"="+val)
		}
	default:
		return nil, p.wrongType(k, "a string of NAME=VALUE lines or a table")
	}
	return env, nil
}

// checkEnvName checks the name of an environment variable: not empty, no
// '=', whitespace or NUL (a shell could not set it, and the guest would
// split it wrongly).
func checkEnvName(name string) error {
	if name == "" || strings.ContainsAny(name, "= \t\r\n\x00") {
		return fmt.Errorf("%q is not a variable name", name)
	}
	return nil
}

// validPlatform reports whether s looks like os/arch[/variant].
func validPlatform(s string) bool {
	parts := strings.Split(s, "/")
	if len(parts) < 2 || len(parts) > 3 {
		return false
	}
	for _, p := range parts {
		if p == "" {
			return false
		}
		for _, r := range p {
			if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '_' || r == '-' || r == '.') {
				return false
			}
		}
	}
	return true
}

// keyLine finds the line (from 1) where key k is set in a TOML document,
// or 0. The decoder knows but does not say, so this follows the lines: a
// table header [a.b] sets the prefix of the keys below it, "a.b = ..."
// and "a = { b = ... }" set keys. Multi-line strings are skipped. It is
// meant for error messages: a line it cannot follow is passed over.
func keyLine(data string, k toml.Key) int {
	want := k.String()
	var prefix string
	inMulti := ""
	n := 0
	for line := range strings.Lines(data) {
		n++
		if inMulti != "" {
			if strings.Count(line, inMulti)%2 == 1 {
				inMulti = ""
			}
			continue
		}
		t := strings.TrimSpace(line)
		if strings.HasPrefix(t, "[") {
			h := strings.Trim(t, "[] \t")
			if i := strings.IndexByte(h, ']'); i >= 0 {
				h = h[:i]
			}
			prefix = normalizeKey(h)
			if prefix == want {
				return n
			}
			continue
		}
		name, rest, ok := strings.Cut(t, "=")
		if !ok {
			continue
		}
		full := normalizeKey(name)
		if prefix != "" {
			full = prefix + "." + full
		}
		if full == want || strings.HasPrefix(want, full+".") {
			return n
		}
		for _, q := range []string{`"""`, `'''`} {
			if strings.Count(rest, q)%2 == 1 {
				inMulti = q
			}
		}
	}
	return 0
}

// normalizeKey writes a dotted TOML key the way toml.Key.String does:
// bare pieces as they are, others quoted.
func normalizeKey(s string) string {
	var parts []string
	for _, p := range strings.Split(s, ".") {
		p = strings.TrimSpace(p)
		if len(p) >= 2 && (p[0] == '"' || p[0] == '\'') && p[len(p)-1] == p[0] {
			p = p[1 : len(p)-1]
		}
		parts = append(parts, p)
	}
	return toml.Key(parts).String()
}

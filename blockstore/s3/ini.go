package s3

import (
	"bufio"
	"bytes"
	"fmt"
	"strings"
)

// maxINIBytes bounds a shared config or credentials file. Real ones are a
// few hundred bytes; a bigger file is almost surely not one of them.
const maxINIBytes = 1 << 20

// iniFile is the parsed subset of the AWS shared config format: sections of
// key = value lines, where a key with an empty value opens a nested block of
// indented lines (`s3 =` then `  endpoint_url = …`), stored as "s3.endpoint_url".
type iniFile map[string]map[string]string

// parseINI parses an AWS shared config or credentials file. Section and key
// names are case-sensitive except that keys are lower-cased, as the AWS CLI
// does; a later duplicate wins. Full-line comments start with # or ;, and a
// # or ; after whitespace in a value starts a comment too (secrets never hold
// whitespace). name is used in error messages only.
func parseINI(name string, data []byte) (iniFile, error) {
	if len(data) > maxINIBytes {
		return nil, fmt.Errorf("%s: %d bytes, more than the %d a config file may have", name, len(data), maxINIBytes)
	}
	out := iniFile{}
	var section map[string]string
	nested := "" // the key whose indented block we are in
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 4096), maxINIBytes+1)
	for lineNo := 1; sc.Scan(); lineNo++ {
		raw := strings.TrimSuffix(sc.Text(), "\r")
		line := strings.TrimSpace(raw)
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		indented := raw[0] == ' ' || raw[0] == '\t'
		if line[0] == '[' {
			end := strings.IndexByte(line, ']')
			if end < 0 {
				return nil, fmt.Errorf("%s:%d: section header %q has no closing ]", name, lineNo, line)
			}
			if rest := strings.TrimSpace(line[end+1:]); rest != "" && rest[0] != '#' && rest[0] != ';' {
				return nil, fmt.Errorf("%s:%d: text after section header: %q", name, lineNo, rest)
			}
			sec := strings.Join(strings.Fields(line[1:end]), " ")
			if sec == "" {
				return nil, fmt.Errorf("%s:%d: empty section name", name, lineNo)
			}
			if out[sec] == nil {
				out[sec] = map[string]string{}
			}
			section = out[sec]
			nested = ""
			continue
		}
		if section == nil {
			return nil, fmt.Errorf("%s:%d: %q before any [section]", name, lineNo, line)
		}
		key, value, ok := strings.Cut(line, "=")
		if !ok {
			return nil, fmt.Errorf("%s:%d: %q is not key = value", name, lineNo, line)
		}
		key = strings.ToLower(strings.TrimSpace(key))
		if key == "" {
			return nil, fmt.Errorf("%s:%d: empty key", name, lineNo)
		}
		value = stripComment(strings.TrimSpace(value))
		switch {
		case indented && nested != "":
			section[nested+"."+key] = value
		case value == "":
			// Opens a nested block (`s3 =`); a plain empty value reads the same.
			nested = key
			section[key] = ""
		default:
			nested = ""
			section[key] = value
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return out, nil
}

// stripComment drops a trailing " # comment" or " ; comment".
func stripComment(v string) string {
	for i := 1; i < len(v); i++ {
		if (v[i] == '#' || v[i] == ';') && (v[i-1] == ' ' || v[i-1] == '\t') {
			return strings.TrimSpace(v[:i])
		}
	}
	return v
}

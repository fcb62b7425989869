package gist

import (
	"errors"
	"strings"
)

// SplitCommand splits a command line into words the way a POSIX shell
// does before expansions, as the original Program Explorer's web page did
// (with the shlex package): words are separated by unquoted blanks
// (space, tab, newline); 'single quotes' keep everything literally;
// "double quotes" keep everything but \ before $ ` " \ and newline; an
// unquoted \ keeps the next character (and drops a newline). Nothing is
// expanded: $HOME, *, ~ and # are plain characters. Unbalanced quotes, a
// trailing backslash and NUL bytes are errors. An empty or blank line
// gives an empty, non-nil slice.
func SplitCommand(s string) ([]string, error) {
	words := []string{}
	var cur strings.Builder
	inWord := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == 0:
			return nil, errors.New("the command has a NUL byte")
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		case c == '\\':
			if i+1 >= len(s) {
				return nil, errors.New("the command ends with a backslash")
			}
			i++
			inWord = true
			if s[i] != '\n' {
				cur.WriteByte(s[i])
			}
		case c == '\'':
			end := strings.IndexByte(s[i+1:], '\'')
			if end < 0 {
				return nil, errors.New("the command has an unbalanced single quote")
			}
			cur.WriteString(s[i+1 : i+1+end])
			i += end + 1
			inWord = true
		case c == '"':
			inWord = true
			closed := false
			for i++; i < len(s); i++ {
				c := s[i]
				if c == '"' {
					closed = true
					break
				}
				if c == 0 {
					return nil, errors.New("the command has a NUL byte")
				}
				if c == '\\' && i+1 < len(s) && strings.IndexByte("$`\"\\\n", s[i+1]) >= 0 {
					i++
					if s[i] != '\n' {
						cur.WriteByte(s[i])
					}
					continue
				}
				cur.WriteByte(c)
			}
			if !closed {
				return nil, errors.New("the command has an unbalanced double quote")
			}
		default:
			cur.WriteByte(c)
			inWord = true
		}
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words, nil
}

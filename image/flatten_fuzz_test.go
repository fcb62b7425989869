package image

import (
	"archive/tar"
	"bytes"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/pe-project/pe/erofs"
)

// FuzzFlatten turns the fuzzer's bytes into a stack of one to four layers
// over a small alphabet of names (files, directories, symlinks, hard links,
// whiteouts, opaque markers, duplicates) and checks Flatten against the
// reference model refFlatten: no panic; an error only where the model
// fails too, and success where it succeeds; the same tree, modes, owners,
// contents and hard link groups. The seed corpus is in
// testdata/fuzz/FuzzFlatten.
func FuzzFlatten(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) { checkFlatten(t, fuzzLayers(data)) })
}

// checkFlatten flattens layers and compares the image with the reference
// model.
func checkFlatten(t *testing.T, layers []testLayer) {
	t.Helper()
	ref, refErr := refFlatten(layers)
	var o opener
	img, err := flattenBytes(t, o.layers(t, layers))
	for i, ss := range o.streams {
		if len(ss) > 2 {
			t.Errorf("layer %d opened %d times", i+1, len(ss))
		}
		for _, s := range ss {
			if !s.closed || err == nil && !s.atEOF {
				t.Errorf("layer %d: stream closed %v, read to its end %v", i+1, s.closed, s.atEOF)
			}
		}
	}
	switch {
	case err != nil && refErr == nil:
		t.Fatalf("Flatten failed where the model succeeds: %v\n%s", err, describe(layers))
	case err == nil && refErr != nil:
		t.Fatalf("Flatten succeeded where the model fails (%v)\n%s", refErr, describe(layers))
	case err != nil:
		return
	}
	wantView, wantGroups := ref.view()
	gotView, gotGroups := snapshot(t, img)
	if diff := cmp.Diff(wantView, gotView, cmpopts.EquateEmpty()); diff != "" {
		t.Errorf("image vs reference model (-model +image):\n%s\n%s", diff, describe(layers))
	}
	if diff := cmp.Diff(wantGroups, gotGroups, cmpopts.EquateEmpty()); diff != "" {
		t.Errorf("hard link groups (-model +image):\n%s\n%s", diff, describe(layers))
	}
}

// fuzzBytes hands out the fuzzer's bytes, then zeros.
type fuzzBytes []byte

func (b *fuzzBytes) next(n int) int {
	if len(*b) == 0 {
		return 0
	}
	v := (*b)[0]
	*b = (*b)[1:]
	return int(v) % n
}

var (
	fuzzNames    = []string{"a", "b", "-x"} // "-x" sorts before ".wh..wh..opq"
	fuzzContents = []string{"", "1", "22", "333", strings.Repeat("big", 1400)}
	fuzzTargets  = []string{"/abs", "../../up", "a", "a/b"}
)

// fuzzLayers decodes a layer stack.
func fuzzLayers(data []byte) []testLayer {
	b := fuzzBytes(data)
	var layers []testLayer
	var made []string // non-directory paths so far: likely hard link targets
	path := func() string {
		parts := make([]string, 1+b.next(3))
		for i := range parts {
			parts[i] = fuzzNames[b.next(len(fuzzNames))]
		}
		return strings.Join(parts, "/")
	}
	n := 1 + b.next(4)
	for range n {
		var ents []lent
		for range b.next(9) {
			p := path()
			var e lent
			switch b.next(10) {
			case 0, 1, 2:
				e = tFile(p, fuzzContents[b.next(len(fuzzContents))]).with([]int64{0o644, 0o755, 0o600}[b.next(3)], 0)
				made = append(made, p)
			case 3, 4:
				if b.next(8) == 0 {
					p = "." // the root's metadata
				}
				e = tDir(p+"/").with([]int64{0o755, 0o700, 0o750}[b.next(3)], b.next(2))
			case 5:
				e = tSym(p, fuzzTargets[b.next(len(fuzzTargets))])
				made = append(made, p)
			case 6:
				target := path()
				if len(made) > 0 && b.next(4) != 0 {
					target = made[b.next(len(made))]
				}
				e = tHard(p, target)
				made = append(made, p)
			case 7:
				dir, _ := cutLast(p)
				e = tFile(joinName(dir, ".wh."+fuzzNames[b.next(len(fuzzNames))]), "")
			case 8:
				dir, _ := cutLast(p)
				e = tFile(joinName(dir, ".wh..wh..opq"), "")
			case 9:
				if len(ents) == 0 {
					continue
				}
				e = ents[b.next(len(ents))]
				if e.typ == 0 {
					e.data = fuzzContents[b.next(len(fuzzContents))]
				}
			}
			if b.next(4) == 0 {
				e.name = "./" + e.name
			}
			ents = append(ents, e)
		}
		layers = append(layers, testLayer{ents: ents})
	}
	return layers
}

func cutLast(p string) (string, string) {
	if i := strings.LastIndexByte(p, '/'); i >= 0 {
		return p[:i], p[i+1:]
	}
	return "", p
}

func joinName(dir, name string) string {
	if dir == "" {
		return name
	}
	return dir + "/" + name
}

// describe prints a layer stack for failure messages.
func describe(layers []testLayer) string {
	var sb strings.Builder
	for i, l := range layers {
		sb.WriteString("layer " + string(rune('1'+i)) + ":\n")
		for _, e := range l.ents {
			switch e.typ {
			case tar.TypeDir:
				sb.WriteString("  dir  " + e.name + "\n")
			case tar.TypeSymlink:
				sb.WriteString("  sym  " + e.name + " -> " + e.link + "\n")
			case tar.TypeLink:
				sb.WriteString("  hard " + e.name + " => " + e.link + "\n")
			default:
				sb.WriteString("  file " + e.name + " = " + fmtData(e.data) + "\n")
			}
		}
	}
	return sb.String()
}

func fmtData(s string) string {
	if len(s) > 8 {
		return s[:8] + "…"
	}
	return "\"" + s + "\""
}

// FuzzFlattenRaw feeds arbitrary bytes to Flatten as the upper of
// two layers, with small limits: errors are fine; panics, hangs and
// limits exceeded without an error are not, and an image Flatten accepts
// must open. The seed corpus (testdata/fuzz/FuzzFlattenRaw) holds the
// hostile layers of the limit tests: a sparse bomb, a chain of PAX
// headers, a deep path, whiteouts.
func FuzzFlattenRaw(f *testing.F) {
	lim := Limits{MaxUnpacked: 4 << 20, MaxEntries: 2000, MaxDepth: 32}
	f.Fuzz(func(t *testing.T, data []byte) {
		var o opener
		layers := o.layers(t, []testLayer{
			{name: "base", ents: []lent{tDir("etc/"), tFile("etc/hello", "hi"), tHard("etc/hard", "etc/hello")}},
			{name: "fuzz", raw: data},
		})
		out := new(memFile)
		w, err := erofs.NewWriter(out, erofs.WriterOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if err := Flatten(t.Context(), w, layers, lim); err != nil {
			w.Discard()
			return
		}
		if err := w.Close(); err != nil {
			t.Fatalf("Close after a successful Flatten: %v", err)
		}
		if int64(len(out.b)) > 2*lim.MaxUnpacked+int64(lim.MaxEntries)*4096 {
			t.Errorf("an image of %d bytes within %+v", len(out.b), lim)
		}
		if _, err := erofs.Open(bytes.NewReader(out.b)); err != nil {
			t.Fatalf("opening the image: %v", err)
		}
	})
}

package pearchive_test

import (
	"bytes"
	"fmt"
	"io"
	"log"
	"strings"

	"github.com/pe-project/pe/pearchive"
)

func ExampleWriter() {
	var buf bytes.Buffer
	w := pearchive.NewWriter(&buf)
	w.File("file1", 5, strings.NewReader("data1"))
	if err := w.Close(); err != nil {
		log.Fatal(err)
	}
	fmt.Printf("% x\n", buf.Bytes())
	// Output: 01 66 69 6c 65 31 00 05 00 00 00 64 61 74 61 31
}

func ExampleReader() {
	var buf bytes.Buffer
	err := pearchive.PackFiles(&buf, []pearchive.MemFile{
		{Path: "src/main.c", Data: []byte("int main(){}")},
		{Path: "out/"},
	})
	if err != nil {
		log.Fatal(err)
	}
	r := pearchive.NewReader(&buf, pearchive.Limits{})
	for {
		e, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			log.Fatal(err)
		}
		data, _ := io.ReadAll(r)
		fmt.Printf("%s dir=%v %q\n", e.Path, e.Dir, data)
	}
	// Output:
	// src dir=true ""
	// src/main.c dir=false "int main(){}"
	// out dir=true ""
}

package weave

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// The Go varint sample of docs/PROTOCOL.md ("Encoding") is taken from the
// document, compiled, and must agree with this client's decoder on every
// 1- and 2-byte input and on the edge cases of each width.
func TestDocVarintSnippetAgreesWithTheDecoder(t *testing.T) {
	text, err := os.ReadFile(protocolDoc)
	if err != nil {
		t.Fatal(err)
	}
	const marker = "```go example=readUvarint\n"
	i := bytes.Index(text, []byte(marker))
	if i < 0 {
		t.Fatalf("%s has no %q block", protocolDoc, strings.TrimSpace(marker))
	}
	snippet := text[i+len(marker):]
	snippet = snippet[:bytes.Index(snippet, []byte("```"))]

	type input struct {
		b        []byte
		maxBytes int
		max      uint64
	}
	var inputs []input
	widths := []struct {
		n   int
		max uint64
	}{{varintBytes16, math.MaxUint16}, {varintBytes32, math.MaxUint32}, {varintBytes64, math.MaxUint64}}
	for _, w := range widths {
		for a := 0; a < 256; a++ {
			inputs = append(inputs, input{[]byte{byte(a)}, w.n, w.max})
			for b := 0; b < 256; b++ {
				inputs = append(inputs, input{[]byte{byte(a), byte(b)}, w.n, w.max})
			}
		}
		for _, edge := range []string{"ffff03", "808004", "ffffffff0f", "ffffffff10", "8080808010",
			"ffffffffffffffffff01", "ffffffffffffffffff02", "80808080808080808001", "ffffffffffffffffff81",
			"8080808000", "808080808000", "ffffff"} {
			b, _ := hex.DecodeString(edge)
			inputs = append(inputs, input{b, w.n, w.max})
		}
	}

	dir := t.TempDir()
	program := "package main\n\nimport (\n\t\"bufio\"\n\t\"encoding/hex\"\n\t\"errors\"\n\t\"fmt\"\n\t\"os\"\n)\n\n" +
		string(snippet) + `
func main() {
	in := bufio.NewScanner(os.Stdin)
	out := bufio.NewWriter(os.Stdout)
	defer out.Flush()
	for in.Scan() {
		var h string
		var maxBytes int
		var max uint64
		fmt.Sscan(in.Text(), &h, &maxBytes, &max)
		b, _ := hex.DecodeString(h)
		v, n, err := readUvarint(b, maxBytes, max)
		if err != nil {
			fmt.Fprintln(out, "error")
		} else {
			fmt.Fprintln(out, v, n)
		}
	}
}
`
	if err := os.WriteFile(filepath.Join(dir, "main.go"), []byte(program), 0o644); err != nil {
		t.Fatal(err)
	}
	var stdin bytes.Buffer
	for _, in := range inputs {
		fmt.Fprintf(&stdin, "%x %d %d\n", in.b, in.maxBytes, in.max)
	}
	cmd := exec.Command(filepath.Join(runtime.GOROOT(), "bin", "go"), "run", "main.go")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GO111MODULE=off")
	cmd.Stdin = &stdin
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("the document's snippet does not run: %v\n%s", err, stderr.String())
	}
	lines := bufio.NewScanner(bytes.NewReader(out))
	for _, in := range inputs {
		if !lines.Scan() {
			t.Fatal("the snippet printed too few lines")
		}
		d := &decoder{b: in.b}
		v := d.uvarint(in.maxBytes, in.max, "v")
		want := "error"
		if d.err == nil {
			want = fmt.Sprint(v, d.off)
		}
		if got := lines.Text(); got != want {
			t.Fatalf("% x (at most %d bytes, max %d): the document's snippet says %q, the client %q", in.b, in.maxBytes, in.max, got, want)
		}
	}
}

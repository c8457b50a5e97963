// Command testsummary reads `go test -json` on standard input and prints what a person needs
// from it: one line per package (with its counts, so a package whose tests all skipped is
// seen), the output of every failed test, and a closing line counting the tests passed,
// failed and skipped. It exits 1 when anything failed.
//
//	go test -json ./... | go run ./internal/testsummary
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
)

type event struct {
	Action  string
	Package string
	Test    string
	Output  string
	Elapsed float64
}

type counts struct{ pass, fail, skip int }

func main() {
	os.Exit(run(os.Stdin, os.Stdout))
}

func run(in io.Reader, out io.Writer) int {
	output := map[string]*strings.Builder{} // package + "\x00" + test -> its output so far
	per := map[string]*counts{}
	var total counts
	failedPkgs := 0
	var skipped []string
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 0, 1<<20), 64<<20)
	for sc.Scan() {
		line := sc.Bytes()
		var e event
		if err := json.Unmarshal(line, &e); err != nil || e.Action == "" {
			fmt.Fprintln(out, string(line)) // not test2json: a build error or the like
			continue
		}
		key := e.Package + "\x00" + e.Test
		c := per[e.Package]
		if c == nil {
			c = &counts{}
			per[e.Package] = c
		}
		switch e.Action {
		case "output", "build-output":
			b := output[key]
			if b == nil {
				b = &strings.Builder{}
				output[key] = b
			}
			if b.Len() < 256<<10 {
				b.WriteString(e.Output)
			}
		case "pass", "fail", "skip":
			if e.Test == "" {
				switch e.Action {
				case "fail":
					failedPkgs++
					if b := output[key]; b != nil {
						fmt.Fprint(out, b.String())
					}
					fmt.Fprintf(out, "FAIL\t%s\t%.1fs\t(%d passed, %d failed, %d skipped)\n", e.Package, e.Elapsed, c.pass, c.fail, c.skip)
				case "skip":
					fmt.Fprintf(out, "?   \t%s\t[no test files]\n", e.Package)
				default:
					fmt.Fprintf(out, "ok  \t%s\t%.1fs\t(%d passed, %d failed, %d skipped)\n", e.Package, e.Elapsed, c.pass, c.fail, c.skip)
				}
				delete(output, key)
				continue
			}
			switch e.Action {
			case "pass":
				c.pass++
				total.pass++
			case "fail":
				c.fail++
				total.fail++
				if b := output[key]; b != nil {
					fmt.Fprint(out, b.String())
				}
			case "skip":
				c.skip++
				total.skip++
				if !strings.Contains(e.Test, "/") {
					skipped = append(skipped, e.Package+" "+e.Test)
				}
			}
			delete(output, key)
		}
	}
	if len(skipped) > 0 {
		sort.Strings(skipped)
		fmt.Fprintf(out, "skipped: %s\n", strings.Join(skipped, ", "))
	}
	fmt.Fprintf(out, "%d passed, %d failed, %d skipped\n", total.pass, total.fail, total.skip)
	if total.fail > 0 || failedPkgs > 0 {
		return 1
	}
	return 0
}

package main

import (
	"strings"
	"testing"
)

func TestSummaryCountsAndShowsFailures(t *testing.T) {
	in := strings.Join([]string{
		`{"Action":"run","Package":"p","Test":"TestA"}`,
		`{"Action":"output","Package":"p","Test":"TestA","Output":"=== RUN   TestA\n"}`,
		`{"Action":"pass","Package":"p","Test":"TestA","Elapsed":0.1}`,
		`{"Action":"output","Package":"p","Test":"TestB","Output":"    b_test.go:9: boom\n"}`,
		`{"Action":"fail","Package":"p","Test":"TestB","Elapsed":0.1}`,
		`{"Action":"skip","Package":"p","Test":"TestC","Elapsed":0}`,
		`{"Action":"fail","Package":"p","Elapsed":0.3}`,
		`{"Action":"skip","Package":"q","Elapsed":0}`,
	}, "\n")
	var out strings.Builder
	code := run(strings.NewReader(in), &out)
	s := out.String()
	if code != 1 {
		t.Errorf("exit %d, want 1", code)
	}
	for _, want := range []string{"b_test.go:9: boom", "FAIL\tp\t0.3s\t(1 passed, 1 failed, 1 skipped)", "skipped: p TestC", "\n1 passed, 1 failed, 1 skipped\n"} {
		if !strings.Contains(s, want) {
			t.Errorf("output lacks %q:\n%s", want, s)
		}
	}
	if strings.Contains(s, "=== RUN   TestA") {
		t.Errorf("a passing test's output was printed:\n%s", s)
	}
}

package ci

import "testing"

func TestEnabledReadsTheValueNotJustItsPresence(t *testing.T) {
	for v, want := range map[string]bool{"": false, "false": false, "0": false, "FALSE": false, "true": true, "1": true, "yes": true} {
		t.Setenv("CI", v)
		if got := Enabled(); got != want {
			t.Errorf("CI=%q: Enabled() = %v, want %v", v, got, want)
		}
	}
}

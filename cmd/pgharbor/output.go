package main

import (
	"encoding/json"
	"fmt"
	"os"

	"golang.org/x/term"
)

// print writes v as JSON with --output json, otherwise calls text.
func (a *app) print(v any, text func()) error {
	if a.output == "json" {
		enc := json.NewEncoder(a.stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(v); err != nil {
			return fmt.Errorf("write json: %w", err)
		}
		return nil
	}
	text()
	return nil
}

// isTerminal reports whether stderr is a terminal (progress bars go there only then).
func (a *app) isTerminal() bool {
	f, ok := a.stderr.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

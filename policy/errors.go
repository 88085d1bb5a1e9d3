package policy

import (
	"errors"
	"fmt"
	"sort"
	"strings"
)

// FieldError is one problem in a policy file, with the position of the offending
// YAML node. Policy is empty for top-level fields and for a policy whose name is
// itself missing or invalid; Field is then the full path from the document root
// (for example "policies[2].name").
type FieldError struct {
	File   string `json:"file"`
	Line   int    `json:"line"`
	Col    int    `json:"col"`
	Policy string `json:"policy,omitempty"`
	Field  string `json:"field,omitempty"`
	Msg    string `json:"message"`
}

// Error formats the problem as FILE:LINE:COL: policy "NAME": FIELD.PATH: message.
// The column is left out when the YAML parser did not report one (syntax errors),
// and the policy part is left out for top-level fields.
func (e *FieldError) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d", e.Line)
		if e.Col > 0 {
			fmt.Fprintf(&b, ":%d", e.Col)
		}
	}
	b.WriteString(": ")
	if e.Policy != "" {
		fmt.Fprintf(&b, "policy %q: ", e.Policy)
	}
	if e.Field != "" {
		b.WriteString(e.Field)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Errors is every problem found in one policy file, in file order. Load and Parse
// return it (as an error) when the file is invalid, so that all problems are
// reported at once rather than one per attempt.
type Errors []*FieldError

// Error prints one problem per line.
func (es Errors) Error() string {
	lines := make([]string, len(es))
	for i, e := range es {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

// sortErrors orders by position; problems at the same position keep the order in
// which they were found, which follows the schema.
func (es Errors) sort() {
	sort.SliceStable(es, func(i, j int) bool {
		if es[i].Line != es[j].Line {
			return es[i].Line < es[j].Line
		}
		return es[i].Col < es[j].Col
	})
}

// ErrTemplate is wrapped by every error of (*ImageSpec).Render, so that a caller can
// tell a server whose name makes an unusable image name from a cloud failure.
var ErrTemplate = errors.New("image template")

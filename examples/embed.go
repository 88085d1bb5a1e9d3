// Package examples holds the policy files people copy. Only the demo policy is
// compiled into the binary, so that `imagekeeper demo` needs no file on disk.
package examples

import _ "embed"

// Demo is examples/demo.yaml, the policy `imagekeeper demo` runs.
//
//go:embed demo.yaml
var Demo []byte

// Package examples holds the policy files people copy. Only the demo policy is
// compiled into the binary, so that `imagekeeper demo` needs no file on disk.
package examples

import _ "embed"

// Demo is examples/demo.yaml, the policy `imagekeeper demo` runs.
//
//go:embed demo.yaml
var Demo []byte

// TimestampHook is examples/hooks/timestamp.sh, the image.hooks command of the
// demo's db policy.
//
//go:embed hooks/timestamp.sh
var TimestampHook []byte

// DemoDir is the directory examples/demo.yaml names for its hook script and its
// output; `imagekeeper demo` replaces it with its own temp directory.
const DemoDir = "/tmp/imagekeeper-demo"

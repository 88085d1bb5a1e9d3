package imagekeeper_test

import (
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
)

// module is this repository's module path.
const module = "github.com/imagekeeper/imagekeeper"

// allowedImports is DESIGN.md section 2's table: for each package of ours, the
// packages of ours and the third-party module prefixes it may depend on
// (transitively). The standard library is always allowed.
var allowedImports = map[string][]string{
	"policy":          {"gopkg.in/yaml.v3", "github.com/robfig/cron/v3"},
	"store":           {"github.com/mattn/go-sqlite3"},
	"store/storetest": {module + "/store", "github.com/mattn/go-sqlite3"},
	"cloud":           {},
	"cloud/simcloud":  {},
	"cloud/cloudtest": {module + "/cloud"},
	// gophercloud's clouds.yaml parser brings yaml.v2 with it.
	"cloud/openstack": {module + "/cloud", "github.com/gophercloud/gophercloud/v2", "gopkg.in/yaml.v2"},
	"scheduler": {
		module + "/policy", module + "/store", module + "/cloud",
		"github.com/robfig/cron/v3", "github.com/prometheus/client_golang/prometheus",
		// The request-rate limit; approved for the scheduler in round 3 (issue 12),
		// after DESIGN.md's table was written.
		"golang.org/x/time/rate",
		// Dependencies of the libraries above, not ours to police.
		"gopkg.in/yaml.v3", "github.com/mattn/go-sqlite3",
		"github.com/prometheus/", "github.com/beorn7/perks", "github.com/cespare/xxhash",
		"github.com/munnerz/goautoneg", "go.yaml.in/yaml", "google.golang.org/protobuf",
		"golang.org/x/sys",
	},
}

// forbiddenImports lists packages that must not appear even where a prefix above
// would allow them.
var forbiddenImports = map[string][]string{
	"scheduler": {"github.com/prometheus/client_golang/prometheus/promhttp"},
}

// TestImportRules enforces the dependency table of DESIGN.md section 2 over
// `go list -deps`, so that a leaf package cannot quietly grow a dependency on the
// rest of the system.
func TestImportRules(t *testing.T) {
	for pkg, allowed := range allowedImports {
		t.Run(pkg, func(t *testing.T) {
			out, err := exec.Command("go", "list", "-deps", "-json=ImportPath,Standard", "./"+pkg).Output()
			if err != nil {
				t.Fatalf("go list -deps ./%s: %v", pkg, err)
			}
			dec := json.NewDecoder(strings.NewReader(string(out)))
			for dec.More() {
				var dep struct {
					ImportPath string
					Standard   bool
				}
				if err := dec.Decode(&dep); err != nil {
					t.Fatalf("decode go list output: %v", err)
				}
				if dep.Standard || dep.ImportPath == module+"/"+pkg {
					continue
				}
				for _, bad := range forbiddenImports[pkg] {
					if dep.ImportPath == bad {
						t.Errorf("%s must not depend on %s", pkg, dep.ImportPath)
					}
				}
				if !allowedPrefix(dep.ImportPath, allowed) {
					t.Errorf("%s depends on %s, which DESIGN.md section 2 does not allow", pkg, dep.ImportPath)
				}
			}
		})
	}
}

func allowedPrefix(path string, allowed []string) bool {
	for _, a := range allowed {
		if path == a || strings.HasPrefix(path, a+"/") || (strings.HasSuffix(a, "/") && strings.HasPrefix(path, a)) {
			return true
		}
	}
	return false
}

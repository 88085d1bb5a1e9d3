package openstack

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestResolveCloud checks that a wrong or missing cloud name says what the
// operator needs: the file read and its entries, or to set cloud: or OS_CLOUD.
func TestResolveCloud(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "clouds.yaml")
	if err := os.WriteFile(file, []byte("clouds:\n  staging: {auth: {auth_url: x}}\n  dev: {auth: {auth_url: x}}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	env := func(vars map[string]string) func(string) string { return func(k string) string { return vars[k] } }
	for _, tt := range []struct {
		name, cloud string
		env         map[string]string
		want        string // the error; "" for none
	}{
		{name: "found", cloud: "dev", env: map[string]string{"OS_CLIENT_CONFIG_FILE": file}},
		{name: "not found", cloud: "prod", env: map[string]string{"OS_CLIENT_CONFIG_FILE": file},
			want: `cloud "prod" not found in ` + file + ` (entries: dev, staging)`},
		{name: "no name", cloud: "", env: map[string]string{"OS_CLIENT_CONFIG_FILE": file},
			want: "no cloud named: set cloud: in the policy file, or OS_CLOUD, to an entry of clouds.yaml"},
		{name: "no file", cloud: "prod", env: map[string]string{"OS_CLIENT_CONFIG_FILE": filepath.Join(dir, "none.yaml")},
			want: `no clouds.yaml for cloud "prod": OS_CLIENT_CONFIG_FILE names ` + filepath.Join(dir, "none.yaml") + ", which does not exist"},
		{name: "nowhere", cloud: "prod", env: map[string]string{},
			want: `no clouds.yaml for cloud "prod": looked in `},
	} {
		t.Run(tt.name, func(t *testing.T) {
			path, err := resolveCloud(tt.cloud, env(tt.env))
			switch {
			case tt.want == "" && (err != nil || path != file):
				t.Errorf("resolveCloud = %q, %v; want %s", path, err, file)
			case tt.want != "" && (err == nil || !strings.HasPrefix(err.Error(), tt.want)):
				t.Errorf("resolveCloud error = %v, want %q", err, tt.want)
			}
		})
	}
}

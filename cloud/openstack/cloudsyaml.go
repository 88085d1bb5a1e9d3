package openstack

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"gopkg.in/yaml.v2"
)

// resolveCloud finds the clouds.yaml the OpenStack clients would read and checks
// that it has an entry named name, so that a mistake is reported with what it
// needs to be fixed: the file read and the entries it has, or where it was looked
// for. gophercloud's own messages say neither ("cloud "prod" not found in
// clouds.yaml"). It returns the file's path. It reads the file with yaml.v2, the
// parser gophercloud reads it with.
func resolveCloud(name string, getenv func(string) string) (string, error) {
	if name == "" {
		return "", errors.New("no cloud named: set cloud: in the policy file, or OS_CLOUD, to an entry of clouds.yaml")
	}
	var locations []string
	if p := getenv("OS_CLIENT_CONFIG_FILE"); p != "" {
		locations = []string{p}
	} else {
		// The order of the OpenStack clients (and gophercloud): the current
		// directory, the user's, the system's.
		if cwd, err := os.Getwd(); err == nil {
			locations = append(locations, filepath.Join(cwd, "clouds.yaml"))
		}
		if dir, err := os.UserConfigDir(); err == nil {
			locations = append(locations, filepath.Join(dir, "openstack", "clouds.yaml"))
		}
		locations = append(locations, "/etc/openstack/clouds.yaml")
	}
	for _, path := range locations {
		b, err := os.ReadFile(path)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return "", fmt.Errorf("read clouds.yaml: %w", err)
		}
		var doc struct {
			Clouds map[string]any `yaml:"clouds"`
		}
		if err := yaml.Unmarshal(b, &doc); err != nil {
			return "", fmt.Errorf("read %s: %w", path, err)
		}
		names := make([]string, 0, len(doc.Clouds))
		for n := range doc.Clouds {
			names = append(names, n)
		}
		slices.Sort(names)
		if !slices.Contains(names, name) {
			have := "it has none"
			if len(names) > 0 {
				have = "entries: " + strings.Join(names, ", ")
			}
			return "", fmt.Errorf("cloud %q not found in %s (%s)", name, path, have)
		}
		return path, nil
	}
	if p := getenv("OS_CLIENT_CONFIG_FILE"); p != "" {
		return "", fmt.Errorf("no clouds.yaml for cloud %q: OS_CLIENT_CONFIG_FILE names %s, which does not exist", name, p)
	}
	return "", fmt.Errorf("no clouds.yaml for cloud %q: looked in %s (or set OS_CLIENT_CONFIG_FILE)",
		name, strings.Join(locations, ", "))
}

package openstack_test

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gophercloud/gophercloud/v2"
	"github.com/gophercloud/gophercloud/v2/openstack/config/clouds"

	"github.com/imagekeeper/imagekeeper/cloud"
	"github.com/imagekeeper/imagekeeper/cloud/openstack"
	"github.com/imagekeeper/imagekeeper/cloud/simcloud"
)

// newFromYAML runs New on a clouds.yaml entry named "sim".
func newFromYAML(t *testing.T, yaml string) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err := openstack.New(ctx, openstack.Options{CloudName: "sim", RetryBaseDelay: time.Millisecond,
		ParseOptions: []clouds.ParseOption{clouds.WithCloudsYAML(bytes.NewReader([]byte(yaml)))}})
	return err
}

func editYAML(t *testing.T, yaml, old, new string) string {
	t.Helper()
	if !strings.Contains(yaml, old) {
		t.Fatalf("clouds.yaml has no %q:\n%s", old, yaml)
	}
	return strings.Replace(yaml, old, new, 1)
}

// TestWrongRegionMessage: Keystone does not check region_name; the catalog simply
// has no endpoint there, and gophercloud says only "No suitable endpoint could be
// found in the service catalog." imagekeeper's error names the region asked for
// and the regions the catalog offers.
func TestWrongRegionMessage(t *testing.T) {
	t.Parallel()
	e := newSim(t, simcloud.Options{})
	yaml := editYAML(t, string(e.sim.CloudsYAML("sim")), `region_name: "RegionOne"`, `region_name: "RegionTwo"`)
	err := newFromYAML(t, yaml)
	t.Logf("imagekeeper says: %v", err)
	var nf *gophercloud.ErrEndpointNotFound
	if !errors.As(err, &nf) {
		t.Fatalf("New in a region the catalog lacks: %v, want gophercloud's ErrEndpointNotFound wrapped", err)
	}
	for _, want := range []string{`compute endpoint`, `region "RegionTwo"`, `public in region "RegionOne"`, "region_name"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("message %q does not say %q", err, want)
		}
	}
	if n := e.sim.Requests()["keystone.token"]; n != 1 {
		t.Errorf("token requests = %d, want 1 (Keystone accepts the credentials: the region is the client's choice)", n)
	}
}

// TestUnscopedTokenMessage: a password entry without project_name gets an
// unscoped token from Keystone (201, no catalog), so no service has an endpoint;
// imagekeeper's error says the project is missing instead of blaming the region.
func TestUnscopedTokenMessage(t *testing.T) {
	t.Parallel()
	e := newSim(t, simcloud.Options{})
	yaml := editYAML(t, string(e.sim.CloudsYAML("sim")), `      project_name: "demo"`+"\n", "")
	err := newFromYAML(t, yaml)
	t.Logf("imagekeeper says: %v", err)
	var nf *gophercloud.ErrEndpointNotFound
	if !errors.As(err, &nf) {
		t.Fatalf("New with an unscoped token: %v, want gophercloud's ErrEndpointNotFound wrapped", err)
	}
	for _, want := range []string{"not scoped to a project", "project_name"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("message %q does not say %q", err, want)
		}
	}
	if strings.Contains(err.Error(), "RegionOne") {
		t.Errorf("message %q blames the region", err)
	}
	reqs := e.sim.Requests()
	if reqs["keystone.token"] != 1 || reqs["compute.versions"] != 0 {
		t.Errorf("requests %v, want one token request (answered 201) and nothing else", reqs)
	}
}

// TestRefusesCloudAt21: a cloud whose maximum is 2.1, the lowest microversion
// the contract is checked at, is refused at start: imagekeeper needs 2.26 for
// server tag filters.
func TestRefusesCloudAt21(t *testing.T) {
	t.Parallel()
	e := newSim(t, simcloud.Options{ComputeVersion: "2.1"})
	_, err := e.client(t, clientConfig{})
	if !errors.Is(err, openstack.ErrMicroversion) || !strings.Contains(err.Error(), "2.1 to 2.1") {
		t.Fatalf("New against a cloud whose maximum is 2.1: %v, want ErrMicroversion naming the range", err)
	}
}

// TestComputeEndpointFormUsed: the client calls Nova at the URL the catalog gives,
// with or without the project id, and both work.
func TestComputeEndpointFormUsed(t *testing.T) {
	t.Parallel()
	for _, withProject := range []bool{false, true} {
		e := newSim(t, simcloud.Options{ComputeProjectID: withProject})
		srv := e.sim.AddServer(simcloud.ServerSpec{Name: "web", Tags: []string{"backup"}})
		var mu sync.Mutex
		var paths []string
		e.middle = func(w http.ResponseWriter, r *http.Request, next http.Handler) {
			if strings.HasPrefix(r.URL.Path, "/compute/") {
				mu.Lock()
				paths = append(paths, r.URL.Path)
				mu.Unlock()
			}
			next.ServeHTTP(w, r)
		}
		c := e.mustClient(t, clientConfig{})
		got, err := c.ListServers(ctx(t), cloud.Selector{Tags: []string{"backup"}})
		if err != nil || len(got) != 1 || got[0].ID != srv {
			t.Fatalf("project in URL %v: ListServers = %v, %v", withProject, got, err)
		}
		if _, err := c.CreateImage(ctx(t), srv, "img", map[string]string{"k": "v"}); err != nil {
			t.Fatalf("project in URL %v: CreateImage: %v", withProject, err)
		}
		pid := e.sim.Options().ProjectID
		mu.Lock()
		for _, p := range paths {
			if p == "/compute/v2.1/" || p == "/compute/v2.1/"+pid+"/" {
				continue // version discovery
			}
			if strings.HasPrefix(p, "/compute/v2.1/"+pid+"/") != withProject {
				t.Errorf("project in URL %v: request to %s", withProject, p)
			}
		}
		mu.Unlock()
	}
}

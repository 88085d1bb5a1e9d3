package openstack

import (
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/gophercloud/gophercloud/v2"
	"github.com/gophercloud/gophercloud/v2/openstack/identity/v3/tokens"
)

// endpointTypes are the catalog types gophercloud accepts for each service client
// New builds (NewBlockStorageV3 takes block-storage and its aliases).
var endpointTypes = map[string][]string{
	"compute": {"compute"},
	"image":   {"image"},
	"volume":  {"block-storage", "block-store", "volume", "volumev2", "volumev3"},
}

// endpointError explains a service client that could not be built. gophercloud
// says "No suitable endpoint could be found in the service catalog." both for a
// region_name the catalog does not have and for a token without a project (an
// unscoped token, which Keystone sends without any catalog); the operator needs
// to know which one, and what the catalog does offer.
func endpointError(pc *gophercloud.ProviderClient, eo gophercloud.EndpointOpts, service string, err error) error {
	var nf *gophercloud.ErrEndpointNotFound
	var nfv gophercloud.ErrEndpointNotFound
	if !errors.As(err, &nf) && !errors.As(err, &nfv) {
		return fmt.Errorf("%s endpoint: %w", service, err)
	}
	res, ok := pc.GetAuthResult().(tokens.CreateResult)
	if !ok {
		return fmt.Errorf("%s endpoint in region %q: %w", service, eo.Region, err)
	}
	if p, perr := res.ExtractProject(); perr == nil && p == nil {
		return fmt.Errorf("%s endpoint: the token is not scoped to a project, so Keystone sent no service catalog: "+
			"set project_name (or project_id) with its domain in the auth section of the clouds.yaml entry: %w", service, err)
	}
	iface := string(eo.Availability)
	if iface == "" {
		iface = string(gophercloud.AvailabilityPublic)
	}
	var offered []string
	if cat, cerr := res.ExtractServiceCatalog(); cerr == nil {
		for _, e := range cat.Entries {
			if !slices.Contains(endpointTypes[service], e.Type) {
				continue
			}
			for _, ep := range e.Endpoints {
				region := ep.Region
				if region == "" {
					region = ep.RegionID
				}
				if o := fmt.Sprintf("%s in region %q", ep.Interface, region); !slices.Contains(offered, o) {
					offered = append(offered, o)
				}
			}
		}
	}
	sort.Strings(offered)
	have := "the catalog has no " + service + " endpoint at all"
	if len(offered) > 0 {
		have = "the catalog offers " + service + " " + strings.Join(offered, ", ")
	}
	where := "in any region"
	if eo.Region != "" {
		where = fmt.Sprintf("in region %q", eo.Region)
	}
	return fmt.Errorf("%s endpoint: no %s endpoint %s (region_name and interface in clouds.yaml); %s: %w",
		service, iface, where, have, err)
}

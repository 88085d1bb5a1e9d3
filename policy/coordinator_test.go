package policy

import (
	"sync"
	"testing"
	"time"
)

func TestCoordinatorPolicyAndApply(t *testing.T) {
	on := &Policy{Name: "on", Enabled: true}
	off := &Policy{Name: "off"}
	c := NewCoordinator(&Config{Version: "v1", Policies: []*Policy{on, off}})
	if p, ok := c.Policy("on"); !ok || p != on {
		t.Fatalf("Policy(on) = %v, %v", p, ok)
	}
	for _, name := range []string{"off", "missing"} {
		if p, ok := c.Policy(name); ok || p != nil {
			t.Errorf("Policy(%s) = %v, %v; want nothing: absent or disabled", name, p, ok)
		}
	}
	var got []string
	c.Subscribe(func(cfg *Config) { got = append(got, cfg.Version) })
	gen := c.Generation()
	if err := c.Apply(&Config{Version: "v2"}); err != nil {
		t.Fatal(err)
	}
	if c.Current().Version != "v2" || c.Generation() != gen+1 || len(got) != 1 || got[0] != "v2" {
		t.Fatalf("after Apply: current %q, generation %d (was %d), subscriber saw %v", c.Current().Version,
			c.Generation(), gen, got)
	}
	if _, ok := c.Policy("on"); ok {
		t.Error("a policy removed by Apply is still in force")
	}
	if err := c.Apply(nil); err == nil {
		t.Error("Apply(nil) accepted")
	}
}

// TestConfigPolicy checks the lookup by name: disabled policies are found too, a
// missing name and a nil config give nil.
func TestConfigPolicy(t *testing.T) {
	on := &Policy{Name: "on", Enabled: true}
	off := &Policy{Name: "off"}
	cfg := &Config{Policies: []*Policy{on, nil, off}}
	if got := cfg.Policy("on"); got != on {
		t.Errorf("Policy(on) = %v", got)
	}
	if got := cfg.Policy("off"); got != off {
		t.Errorf("Policy(off) = %v; a disabled policy is still the config's", got)
	}
	if got := cfg.Policy("missing"); got != nil {
		t.Errorf("Policy(missing) = %v", got)
	}
	if got := (*Config)(nil).Policy("on"); got != nil {
		t.Errorf("nil config: Policy(on) = %v", got)
	}
}

// TestPolicyLocationDefault checks the UTC default of a policy without a schedule
// or zone (one built by hand).
func TestPolicyLocationDefault(t *testing.T) {
	for _, p := range []*Policy{{Name: "bare"}, {Name: "no zone", Schedule: &Schedule{}}} {
		if got := p.Location(); got != time.UTC {
			t.Errorf("%s: Location() = %v, want UTC", p.Name, got)
		}
	}
}

// TestCoordinatorConcurrent runs readers against Apply under -race.
func TestCoordinatorConcurrent(t *testing.T) {
	c := NewCoordinator(&Config{Policies: []*Policy{{Name: "p", Enabled: true}}})
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 200 {
				if i%2 == 0 {
					_ = c.Apply(&Config{Policies: []*Policy{{Name: "p", Enabled: true}}})
				} else {
					c.Policy("p")
					_ = c.Current()
				}
			}
		}()
	}
	wg.Wait()
}

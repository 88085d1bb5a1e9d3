package policy

import (
	"fmt"
	"sync"
)

// Coordinator owns the config in force. Everything that decides by the config at the
// moment of the decision (the scheduler, the limits, retention, the metrics, resumed
// work) asks it, or subscribes to it, instead of keeping the config it was started
// with: a reload is one Apply, and nothing can go on acting on the rules it replaced.
// It is safe for concurrent use.
type Coordinator struct {
	// applyMu serialises Apply, so subscribers see configs in order and one at a time.
	applyMu sync.Mutex

	mu         sync.RWMutex
	cfg        *Config
	generation uint64
	subs       []func(*Config)
}

// NewCoordinator returns a Coordinator whose current config is cfg (nil: none yet).
func NewCoordinator(cfg *Config) *Coordinator {
	c := &Coordinator{cfg: cfg}
	if cfg != nil {
		c.generation = 1
	}
	return c
}

// Load reads, validates and compiles the policy file at path and applies it. On any
// error the current config stays in force.
func (c *Coordinator) Load(path string) (*Config, error) {
	cfg, err := Load(path)
	if err != nil {
		return nil, err
	}
	if err := c.Apply(cfg); err != nil {
		return nil, err
	}
	return cfg, nil
}

// Current returns the config in force; nil before the first one.
func (c *Coordinator) Current() *Config {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.cfg
}

// Generation counts the configs applied; it changes with every Apply, even one of
// identical content.
func (c *Coordinator) Generation() uint64 {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.generation
}

// Policy returns the named policy of the config in force when it is there and
// enabled; ok is false otherwise. Whatever acts on a policy's images (retention
// above all) must ask here at the moment it decides: a policy removed or disabled by
// a reload is not acted on.
func (c *Coordinator) Policy(name string) (p *Policy, ok bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if p := c.cfg.Policy(name); p != nil && p.Enabled {
		return p, true
	}
	return nil, false
}

// Apply makes cfg the config in force and hands it to every subscriber, in the
// order they subscribed, before it returns. A nil cfg is refused.
func (c *Coordinator) Apply(cfg *Config) error {
	if cfg == nil {
		return fmt.Errorf("apply config: nil config")
	}
	c.applyMu.Lock()
	defer c.applyMu.Unlock()
	c.mu.Lock()
	c.cfg = cfg
	c.generation++
	subs := append([]func(*Config){}, c.subs...)
	c.mu.Unlock()
	// Subscribers run without mu held, so they may call Current and Policy.
	for _, fn := range subs {
		fn(cfg)
	}
	return nil
}

// Subscribe calls fn with every config applied from now on. It does not call fn
// with the current config: a subscriber takes that at its own start.
func (c *Coordinator) Subscribe(fn func(*Config)) {
	c.applyMu.Lock()
	defer c.applyMu.Unlock()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.subs = append(c.subs, fn)
}

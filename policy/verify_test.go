package policy

import (
	"testing"
	"time"
)

func TestVerifyBlock(t *testing.T) {
	cfg := mustLoad(t, "testdata/verify.good.yaml")
	web, db := cfg.Policies[0].Verify, cfg.Policies[1].Verify
	if web == nil || db == nil {
		t.Fatalf("verify blocks not compiled: %+v %+v", web, db)
	}
	if web.Inherited || web.Schedule.Location.String() != "Europe/Berlin" || web.Sample != 2 || web.Flavor != "m1.small" ||
		web.Network != "3f2a9c1e-5b7d-4e8f-9a0b-1c2d3e4f5a6b" || web.Timeout != 45*time.Minute || web.ConsoleMarker != "login:" {
		t.Errorf("web verify = %+v", web)
	}
	// Saturday 05:00 in Berlin after Friday noon UTC.
	if got, want := web.Schedule.Next(time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)), time.Date(2026, 11, 28, 4, 0, 0, 0, time.UTC); !got.Equal(want) {
		t.Errorf("web drill next = %s, want %s", got, want)
	}
	if !db.Inherited || db.Schedule != cfg.Policies[1].Schedule || db.Sample != 1 || db.Network != "none" || db.Timeout != DefaultVerifyTimeout {
		t.Errorf("db verify = %+v, want the backup schedule, sample 1, no network, default timeout", db)
	}
	if mustLoad(t, "testdata/full.good.yaml").Policies[0].Verify != nil {
		t.Error("a policy without a verify block has one")
	}
}

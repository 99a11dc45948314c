package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/custodyhq/custody/agent/preflight"
)

func TestPreflightCommand(t *testing.T) {
	host := "../../preflight/testdata/locked"
	args := []string{"--proc", host + "/proc", "--sys", host + "/sys", "--lime-dir", "/nonexistent"}

	var out bytes.Buffer
	cmd := preflightCmd()
	cmd.SetOut(&out)
	cmd.SetArgs(append(args, "-o", "json"))
	if err := cmd.Execute(); err != nil {
		t.Fatal(err)
	}
	var checks []preflight.Check
	if err := json.Unmarshal(out.Bytes(), &checks); err != nil {
		t.Fatalf("-o json: %v\n%s", err, out.String())
	}
	byName := map[string]preflight.Check{}
	for _, c := range checks {
		byName[c.Name] = c
	}
	if c := byName["lockdown"]; c.OK || !strings.HasPrefix(c.Detail, "confidentiality") {
		t.Errorf("lockdown = %+v", c)
	}

	out.Reset()
	cmd = preflightCmd()
	cmd.SetOut(&out)
	cmd.SetArgs(args)
	if err := cmd.Execute(); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"CHECK", "module_sig_enforce  no   enforced", "kcore", "lime_module"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, out.String())
		}
	}

	cmd = preflightCmd()
	cmd.SetOut(&out)
	cmd.SetArgs(append(args, "-o", "yaml"))
	if err := cmd.Execute(); err == nil {
		t.Error("-o yaml accepted")
	}
}

package manifest

import (
	"bytes"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

var update = flag.Bool("update", false, "rewrite testdata golden files")

func testManifest() *Manifest {
	t0 := time.Date(2025, 3, 14, 9, 26, 53, 589793000, time.UTC)
	return &Manifest{
		SchemaVersion: SchemaVersion,
		CollectionID:  "01JPB7Q0X3M9",
		CaseID:        "IR-2025-042",
		Reason:        "GuardDuty CryptoCurrency:EC2/BitcoinTool.B!DNS & outbound to <pool>",
		RequestedBy:   "spiffe://custody/responder/alice",
		RequestedAt:   t0,
		StartedAt:     t0.Add(1200 * time.Millisecond),
		FinishedAt:    t0.Add(47 * time.Second),
		State:         StatePartial,
		Agent: Agent{
			ID:              "i-0abc123def4567890",
			Identity:        "spiffe://custody/agent/i-0abc123def4567890",
			CertFingerprint: "sha256:" + strings.Repeat("ab", 32),
			Hostname:        "ip-10-0-1-23",
			Kernel:          "6.1.0-1024-aws",
			OS:              "Ubuntu 24.04.2 LTS",
			Arch:            "amd64",
			InstanceID:      "i-0abc123def4567890",
			Version:         "0.1.0",
		},
		Collector: &Collector{Identity: "spiffe://custody/collector/test", Version: "0.1.0"},
		Artifacts: []Artifact{
			{
				Name:            "processes",
				Source:          "procfs",
				State:           StateComplete,
				RawSize:         12345,
				AgentSHA256:     strings.Repeat("01", 32),
				CollectorSHA256: strings.Repeat("01", 32),
				Key:             "processes.jsonl.zst",
				Location:        "/var/lib/custody/evidence/IR-2025-042/i-0abc123def4567890/01JPB7Q0X3M9/processes.jsonl.zst",
				StoredSize:      2345,
				StoredSHA256:    strings.Repeat("23", 32),
				Compression:     CompressionZstd,
				Chunks:          1,
				Warnings:        []string{"pid 4242 exited during capture"},
				Tool:            Tool{Name: "custody-agent/processes", Version: "0.1.0"},
			},
			{
				Name:         "physical_memory",
				Source:       "/proc/kcore",
				State:        StateFailed,
				RawSize:      1 << 30,
				AgentSHA256:  strings.Repeat("45", 32),
				Key:          "physical_memory.lime.zst",
				StoredSize:   1 << 28,
				StoredSHA256: strings.Repeat("67", 32),
				Compression:  CompressionZstd,
				Chunks:       256,
				VersionID:    "3HL4kqtJlcpXroDTDmJ+rmSpXd3dIbrHY",
				ETag:         `"d41d8cd98f00b204e9800998ecf8427e-64"`,
				Errors:       []string{"read /proc/kcore: bad address"},
				SkippedRanges: []Range{
					{Start: 0xfee00000, End: 0xfee01000, Reason: "EFAULT"},
				},
				Tool: Tool{Name: "custody-agent/kcore", Version: "0.1.0"},
			},
		},
	}
}

func TestMarshalGolden(t *testing.T) {
	got, err := Marshal(testManifest())
	if err != nil {
		t.Fatal(err)
	}
	golden := filepath.Join("testdata", "manifest.golden.json")
	if *update {
		if err := os.WriteFile(golden, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if diff := cmp.Diff(string(want), string(got)); diff != "" {
		t.Errorf("Marshal output differs from %s (-want +got):\n%s", golden, diff)
	}
	again, err := Marshal(testManifest())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, again) {
		t.Error("Marshal is not deterministic")
	}
}

func TestRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name string
		m    *Manifest
	}{
		{"full", testManifest()},
		{"one-shot-local", func() *Manifest {
			m := testManifest()
			m.RequestedBy = "local"
			m.Collector = nil
			m.Agent.CertFingerprint = ""
			m.Agent.InstanceID = ""
			m.Agent.TaskARN = "arn:aws:ecs:eu-west-1:123456789012:task/prod/0123456789abcdef"
			return m
		}()},
		{"no-artifacts", func() *Manifest {
			m := testManifest()
			m.State = StateFailed
			m.Artifacts = []Artifact{}
			return m
		}()},
		{"signed", func() *Manifest {
			m := testManifest()
			m.Signer = &Signer{Identity: "spiffe://custody/collector/test", Certificate: "-----BEGIN CERTIFICATE-----\n", KeyFingerprint: "sha256:00"}
			return m
		}()},
		{"non-utc-times", func() *Manifest {
			m := testManifest()
			m.FinishedAt = m.FinishedAt.In(time.FixedZone("", 2*3600))
			return m
		}()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data, err := Marshal(tc.m)
			if err != nil {
				t.Fatal(err)
			}
			got, err := Parse(data)
			if err != nil {
				t.Fatalf("Parse(Marshal(m)): %v\n%s", err, data)
			}
			if diff := cmp.Diff(tc.m, got); diff != "" {
				t.Errorf("round trip (-want +got):\n%s", diff)
			}
		})
	}
}

func TestMarshalNilArtifacts(t *testing.T) {
	m := testManifest()
	m.Artifacts = nil
	data, err := Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(data, []byte(`"artifacts": []`)) {
		t.Errorf("nil artifacts not written as []:\n%s", data)
	}
	if m.Artifacts != nil {
		t.Error("Marshal modified its argument")
	}
}

func TestMarshalRefusesInvalid(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mutate func(m *Manifest)
	}{
		{"schema-0", func(m *Manifest) { m.SchemaVersion = 0 }},
		{"bad-state", func(m *Manifest) { m.State = "running" }},
		{"uppercase-digest", func(m *Manifest) { m.Artifacts[0].StoredSHA256 = strings.Repeat("AB", 32) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := testManifest()
			tc.mutate(m)
			if _, err := Marshal(m); !errors.Is(err, ErrMalformed) {
				t.Errorf("Marshal = %v, want ErrMalformed", err)
			}
		})
	}
	if _, err := Marshal(nil); !errors.Is(err, ErrMalformed) {
		t.Errorf("Marshal(nil) = %v, want ErrMalformed", err)
	}
}

func TestParseRejects(t *testing.T) {
	good, err := Marshal(testManifest())
	if err != nil {
		t.Fatal(err)
	}
	// Each case edits the good manifest's text once, so each proves that
	// exactly one defect is enough to refuse it.
	edit := func(old, new string) []byte {
		if !bytes.Contains(good, []byte(old)) {
			t.Fatalf("test bug: %q not in the manifest", old)
		}
		return bytes.Replace(good, []byte(old), []byte(new), 1)
	}
	for _, tc := range []struct {
		name    string
		data    []byte
		wantMsg string
	}{
		{"empty", nil, ""},
		{"not-json", []byte("manifest"), ""},
		{"null", []byte("null"), "schema_version 0"},
		{"array", []byte("[]"), "unexpected array"},
		{"string", []byte(`"x"`), ""},
		{"truncated", good[:len(good)/2], ""},
		{"trailing-data", append(bytes.Clone(good), "{}"...), "data after"},
		{"schema-2", edit(`"schema_version": 1`, `"schema_version": 2`), "schema_version 2"},
		{"schema-missing", edit(`"schema_version": 1,`, ``), "schema_version 0"},
		{"schema-string", edit(`"schema_version": 1`, `"schema_version": "1"`), ""},
		{"unknown-top-level", edit(`"reason"`, `"evil": true, "reason"`), `unknown field "evil"`},
		{"unknown-in-agent", edit(`"hostname"`, `"uid": 0, "hostname"`), `$.agent: unknown field "uid"`},
		{"unknown-in-artifact", edit(`"chunks": 1,`, `"chunks": 1, "extra": [],`), `$.artifacts[0]: unknown field "extra"`},
		{"unknown-in-range", edit(`"reason": "EFAULT"`, `"reason": "EFAULT", "x": 1`), "unknown field"},
		{"miscased-key", edit(`"state": "partial"`, `"State": "partial"`), `unknown field "State"`},
		{"duplicate-key", edit(`"state": "partial"`, `"state": "partial", "state": "complete"`), `duplicate field "state"`},
		{"object-for-time", edit(`"started_at": "2025-03-14T09:26:54.789793Z"`, `"started_at": {}`), ""},
		{"nested-array-for-string", edit(`"errors": [`, `"errors": [[],`), "unexpected array"},
		{"bad-state", edit(`"state": "partial"`, `"state": "done"`), `state "done"`},
		{"bad-artifact-state", edit(`"state": "complete"`, `"state": "partial"`), `state "partial"`},
		{"bad-compression", edit(`"compression": "zstd"`, `"compression": "gzip"`), `compression "gzip"`},
		{"uppercase-digest", edit(strings.Repeat("23", 32), strings.Repeat("2A", 32)), "stored_sha256"},
		{"short-digest", edit(strings.Repeat("01", 32), "01"), "agent_sha256"},
		{"negative-size", edit(`"raw_size": 12345`, `"raw_size": -1`), "negative"},
		{"backwards-range", edit(`"end": 4276097024`, `"end": 1`), "ends before it starts"},
		{"empty-artifact-name", edit(`"name": "processes"`, `"name": ""`), "name is empty"},
		{"no-collection-id", edit(`"collection_id": "01JPB7Q0X3M9"`, `"collection_id": ""`), "collection_id"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := Parse(tc.data)
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("Parse = %+v, %v; want ErrMalformed", m, err)
			}
			if !strings.Contains(err.Error(), tc.wantMsg) {
				t.Errorf("Parse error %q does not mention %q", err, tc.wantMsg)
			}
		})
	}
}

// TestDetailsRoundTrip: artifact details (free-form keys) survive Marshal
// and Parse, and a duplicated key is still refused.
func TestDetailsRoundTrip(t *testing.T) {
	m := testManifest()
	m.Artifacts[0].Details = map[string]string{"upload_resumes": "2", "source": "kcore"}
	data, err := Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Parse(data)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(m.Artifacts[0].Details, got.Artifacts[0].Details); diff != "" {
		t.Errorf("details (-want +got):\n%s", diff)
	}
	dup := bytes.Replace(data, []byte(`"source": "kcore"`), []byte(`"source": "kcore", "source": "lime"`), 1)
	if _, err := Parse(dup); !errors.Is(err, ErrMalformed) {
		t.Fatalf("duplicate details key: got %v, want ErrMalformed", err)
	}
}

package main

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/custodyhq/custody/internal/artifactflags"
	custodyv1 "github.com/custodyhq/custody/proto/custody/v1"
)

var version = "dev"

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var cf connFlags
	root := &cobra.Command{
		Use:           "custodyctl",
		Short:         "Responder CLI for custody: agents, collections, evidence",
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       version,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	cf.register(root.PersistentFlags())
	client := func() (custodyv1.ResponderServiceClient, func(), error) {
		c, err := cf.resolve()
		if err != nil {
			return nil, nil, err
		}
		cc, err := c.dial()
		if err != nil {
			return nil, nil, err
		}
		return custodyv1.NewResponderServiceClient(cc), func() { cc.Close() }, nil
	}
	root.AddCommand(agentsCmd(client), collectCmd(client), collectionsCmd(client), verifyCmd(client, &cf))
	root.SetArgs(args)
	return root.ExecuteContext(ctx)
}

type clientFunc func() (custodyv1.ResponderServiceClient, func(), error)

func outputFlag(cmd *cobra.Command, out *string) {
	cmd.Flags().StringVarP(out, "output", "o", "table", "table or json")
}

// printJSON writes protobuf messages with their proto field names, the
// form jq users expect.
func printJSON(w io.Writer, m proto.Message) error {
	b, err := protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: false, Indent: "  "}.Marshal(m)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}

func agentsCmd(client clientFunc) *cobra.Command {
	var out string
	cmd := &cobra.Command{
		Use:   "agents",
		Short: "List enrolled agents",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, done, err := client()
			if err != nil {
				return err
			}
			defer done()
			resp, err := c.ListAgents(cmd.Context(), &custodyv1.ListAgentsRequest{})
			if err != nil {
				return err
			}
			if out == "json" {
				return printJSON(cmd.OutOrStdout(), resp)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "AGENT\tHOSTNAME\tCONNECTED\tKERNEL\tLAST SEEN")
			for _, a := range resp.GetAgents() {
				connected := fmt.Sprint(a.GetConnected())
				if a.GetRevokedAt() != nil {
					connected = "revoked"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", a.GetAgentId(), a.GetHost().GetHostname(), connected, a.GetHost().GetKernel(), fmtTime(a.GetLastSeen().AsTime()))
			}
			return tw.Flush()
		},
	}
	outputFlag(cmd, &out)
	cmd.AddCommand(revokeCmd(client))
	return cmd
}

func revokeCmd(client clientFunc) *cobra.Command {
	var reason, out string
	cmd := &cobra.Command{
		Use:   "revoke AGENT-ID",
		Short: "Revoke an agent: end its session, refuse its certificates, fail its unfinished collections",
		Long: `revoke ends an agent identity before its certificate expires: for a host that
was decommissioned, or whose agent key may be in an intruder's hands. The host has
to enrol again, with a new join token, to be used again.`,
		Example: `  custodyctl agents revoke a20261122t081500-1a2b3c4d5e --reason "instance terminated after IR-1"`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, done, err := client()
			if err != nil {
				return err
			}
			defer done()
			resp, err := c.RevokeAgent(cmd.Context(), &custodyv1.RevokeAgentRequest{AgentId: args[0], Reason: reason})
			if err != nil {
				return err
			}
			if out == "json" {
				return printJSON(cmd.OutOrStdout(), resp)
			}
			a := resp.GetAgent()
			fmt.Fprintf(cmd.OutOrStdout(), "%s revoked at %s by %s: %s\n", a.GetAgentId(), fmtTime(a.GetRevokedAt().AsTime()), a.GetRevokedBy(), a.GetRevokeReason())
			return nil
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why (required; recorded, and given to its failed collections)")
	cmd.MarkFlagRequired("reason")
	outputFlag(cmd, &out)
	return cmd
}

func collectCmd(client clientFunc) *cobra.Command {
	var agent, caseID, reason, out string
	var artifacts []string
	var artFlags *artifactflags.Set
	var wait bool
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "collect",
		Short: "Start a collection on an agent",
		Example: `  custodyctl collect --agent a20261122t081500-1a2b3c4d5e --artifacts host,processes --case IR-1 --reason "GuardDuty finding" --wait
  custodyctl collect --agent ID --artifacts file --path /var/tmp/mem.lime --case IR-1 --wait -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			params, err := artFlags.Params(artifacts)
			if err != nil {
				return err
			}
			req := &custodyv1.CreateCollectionRequest{AgentId: agent, CaseId: caseID, Reason: reason}
			for _, name := range artifacts {
				req.Artifacts = append(req.Artifacts, &custodyv1.ArtifactSpec{Name: name, Params: params[name]})
			}
			c, done, err := client()
			if err != nil {
				return err
			}
			defer done()
			resp, err := c.CreateCollection(cmd.Context(), req)
			if err != nil {
				return err
			}
			col := resp.GetCollection()
			if !wait {
				if out == "json" {
					return printJSON(cmd.OutOrStdout(), col)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "collection %s created (%s)\n", col.GetCollectionId(), stateName(col.GetState()))
				return nil
			}
			if out != "json" {
				fmt.Fprintf(cmd.ErrOrStderr(), "collection %s on agent %s, case %s\n", col.GetCollectionId(), col.GetAgentId(), col.GetCaseId())
			}
			wctx := cmd.Context()
			if timeout > 0 {
				var cancel context.CancelFunc
				wctx, cancel = context.WithTimeout(wctx, timeout)
				defer cancel()
			}
			final, err := watch(wctx, c, col.GetCollectionId(), out != "json", cmd.ErrOrStderr())
			if err != nil && wctx.Err() != nil && cmd.Context().Err() == nil {
				return fmt.Errorf("collection %s did not finish within %s (it goes on; see `custodyctl collections show %s`)", col.GetCollectionId(), timeout, col.GetCollectionId())
			}
			if err != nil {
				return err
			}
			if out == "json" {
				if err := printJSON(cmd.OutOrStdout(), final); err != nil {
					return err
				}
			} else {
				printCollection(cmd.OutOrStdout(), final)
			}
			if final.GetState() != custodyv1.CollectionState_COLLECTION_STATE_COMPLETE {
				return exitError{code: 2}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&agent, "agent", "", "agent id (see `custodyctl agents`)")
	f.StringSliceVar(&artifacts, "artifacts", []string{"host", "processes"}, "artifacts to capture")
	f.StringVar(&caseID, "case", "", "case id (letters, digits, '.', '_', '-')")
	f.StringVar(&reason, "reason", "", "why this evidence is collected (recorded in the manifest)")
	artFlags = artifactflags.Register(f)
	f.BoolVar(&wait, "wait", false, "wait for the collection to finish, showing progress")
	f.DurationVar(&timeout, "timeout", 0, "with --wait: give up waiting after this long (0: never)")
	outputFlag(cmd, &out)
	cmd.MarkFlagRequired("agent")
	cmd.MarkFlagRequired("case")
	return cmd
}

func collectionsCmd(client clientFunc) *cobra.Command {
	cmd := &cobra.Command{Use: "collections", Short: "Inspect collections"}
	var out string
	show := &cobra.Command{
		Use:   "show ID",
		Short: "Show a collection's state and artifacts",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, done, err := client()
			if err != nil {
				return err
			}
			defer done()
			resp, err := c.GetCollection(cmd.Context(), &custodyv1.GetCollectionRequest{CollectionId: args[0]})
			if err != nil {
				return err
			}
			if out == "json" {
				return printJSON(cmd.OutOrStdout(), resp.GetCollection())
			}
			printCollection(cmd.OutOrStdout(), resp.GetCollection())
			return nil
		},
	}
	outputFlag(show, &out)
	cmd.AddCommand(show)
	return cmd
}

func stateName(s fmt.Stringer) string {
	name := s.String()
	if i := strings.LastIndex(name, "_STATE_"); i >= 0 {
		name = name[i+len("_STATE_"):]
	}
	return strings.ToLower(name)
}

func fmtTime(t time.Time) string {
	if t.IsZero() || t.Unix() == 0 {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

func printCollection(w io.Writer, c *custodyv1.Collection) {
	fmt.Fprintf(w, "collection  %s\nstate       %s\nagent       %s\ncase        %s\nrequested   %s by %s\n",
		c.GetCollectionId(), stateName(c.GetState()), c.GetAgentId(), c.GetCaseId(), fmtTime(c.GetRequestedAt().AsTime()), c.GetRequestedBy())
	if c.GetFinishedAt() != nil {
		fmt.Fprintf(w, "finished    %s\n", fmtTime(c.GetFinishedAt().AsTime()))
	}
	if c.GetManifestKey() != "" {
		fmt.Fprintf(w, "manifest    %s\n", c.GetManifestKey())
	}
	if c.GetError() != "" {
		fmt.Fprintf(w, "error       %s\n", c.GetError())
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ARTIFACT\tSTATE\tRAW BYTES\tSTORED BYTES\tSHA-256 (raw)\tERROR")
	arts := append([]*custodyv1.ArtifactStatus(nil), c.GetArtifacts()...)
	sort.Slice(arts, func(i, j int) bool { return arts[i].GetName() < arts[j].GetName() })
	for _, a := range arts {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s\t%s\n", a.GetName(), stateName(a.GetState()), a.GetRawSize(), a.GetStoredSize(), a.GetRawSha256(), a.GetError())
	}
	tw.Flush()
}

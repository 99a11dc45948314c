package main

import (
	"encoding/json"
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/custodyhq/custody/agent/artifact"
	"github.com/custodyhq/custody/agent/preflight"
)

func preflightCmd() *cobra.Command {
	var out string
	var opts preflight.Options
	cmd := &cobra.Command{
		Use:   "preflight",
		Short: "Report what this host lets the agent capture, and why not",
		Long: `preflight checks, without changing anything, what physical-memory capture needs:
root, CAP_SYS_RAWIO/SYS_MODULE/SYS_ADMIN/SYS_PTRACE, kernel lockdown, module signature
enforcement, /proc/kcore, and a LiME module built for the running kernel. The agent sends
the same checks in its hello, so responders see them in custodyctl agents.`,
		Example: `  custody-agent preflight
  custody-agent preflight -o json | jq '.[] | select(.ok | not)'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			checks := preflight.Run(opts)
			w := cmd.OutOrStdout()
			switch out {
			case "json":
				b, err := json.MarshalIndent(checks, "", "  ")
				if err != nil {
					return err
				}
				_, err = fmt.Fprintf(w, "%s\n", b)
				return err
			case "table":
				tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "CHECK\tOK\tDETAIL")
				for _, c := range checks {
					ok := "no"
					if c.OK {
						ok = "yes"
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\n", c.Name, ok, c.Detail)
				}
				return tw.Flush()
			default:
				return fmt.Errorf("--output %q: want table or json", out)
			}
		},
	}
	f := cmd.Flags()
	f.StringVarP(&out, "output", "o", "table", "table or json")
	f.StringVar(&opts.LimeDir, "lime-dir", artifact.DefaultLimeDir, "directory of LiME modules, <dir>/<kernel release>/lime.ko")
	f.StringVar(&opts.Env.ProcRoot, "proc", "/proc", "procfs root")
	f.StringVar(&opts.Env.SysRoot, "sys", "/sys", "sysfs root")
	return cmd
}

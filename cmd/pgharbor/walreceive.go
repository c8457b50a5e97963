package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime/debug"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/spf13/cobra"

	"github.com/pgharbor/pgharbor/internal/repo"
	"github.com/pgharbor/pgharbor/wal"
)

func newWALReceiveCmd(a *app) *cobra.Command {
	var conn, slot string
	var createSlot, dropSlot, sync bool
	cmd := &cobra.Command{
		Use:   "receive",
		Short: "Stream WAL into the repository over a physical replication slot (runs until stopped)",
		Long: `receive connects to postgres.conn with the replication protocol and streams WAL from a
physical replication slot (wal.stream.slot, default pgharbor; created when missing unless
wal.stream.create_slot is false) into the repository: the segment being written is stored
in pieces at least every wal.stream.flush_interval (1s), each completed segment as the
ordinary segment object (the same bytes archive_command stores). The server learns that WAL
is flushed only once it is in the repository: the slot keeps what is not stored yet, and
with synchronous_standby_names naming wal.stream.application_name (pgharbor) a commit
returns only once its WAL is in the repository. restore and wal fetch use the pieces of the
newest segment by themselves.

--drop-slot drops the slot and exits (a slot nobody reads keeps WAL on the server forever).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			if cmd.Flags().Changed("conn") {
				a.cfg.Postgres.Conn = conn
			}
			if a.cfg.Postgres.Conn == "" {
				return errors.New("no server to stream from: set --conn, postgres.conn or PGHARBOR_POSTGRES_CONN")
			}
			s := a.cfg.WAL.Stream
			if cmd.Flags().Changed("slot") {
				s.Slot = slot
			}
			if dropSlot {
				if s.Slot == "" {
					s.Slot = wal.DefaultReceiveSlot
				}
				return dropReplicationSlot(cmd, a.cfg.Postgres.Conn, s.Slot)
			}
			if cmd.Flags().Changed("create-slot") {
				s.CreateSlot = &createSlot
			}
			if cmd.Flags().Changed("synchronous") {
				s.Synchronous = sync
			}
			a.cfg.WAL.Stream = s
			r, opts, err := a.openReceiver(ctx)
			if err != nil {
				return err
			}
			defer r.Backend().Close()
			boundReceiverMemory(cmd.Context())
			err = wal.Receive(ctx, r, opts)
			if ctx.Err() != nil {
				return nil // stopped
			}
			return err
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&conn, "conn", "", "connection string of the server (postgres.conn); the user needs REPLICATION")
	fl.StringVar(&slot, "slot", "", "physical replication slot (wal.stream.slot; default pgharbor)")
	fl.BoolVar(&createSlot, "create-slot", true, "create the slot when it does not exist (wal.stream.create_slot)")
	fl.BoolVar(&dropSlot, "drop-slot", false, "drop the slot and exit")
	fl.BoolVar(&sync, "synchronous", false, "store WAL as soon as the server pauses sending (wal.stream.synchronous), for synchronous_standby_names")
	return cmd
}

// boundReceiverMemory is boundMemory for the long-running receiver, which keeps little
// (the segment's compressed frames, one sealed object, the encoder's window) and makes
// little garbage: the collector may run more often, so that the heap does not grow to twice
// what is live between cycles. GOGC and GOMEMLIMIT override it.
func boundReceiverMemory(ctx context.Context) {
	boundMemory(ctx)
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(25)
	}
}

func dropReplicationSlot(cmd *cobra.Command, connStr, slot string) error {
	ctx := cmd.Context()
	cfg, err := pgconn.ParseConfig(connStr)
	if err != nil {
		return err
	}
	cfg.RuntimeParams["replication"] = "true"
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(ctx)
	if err := pglogrepl.DropReplicationSlot(ctx, conn, slot, pglogrepl.DropReplicationSlotOptions{Wait: true}); err != nil {
		return fmt.Errorf("drop slot %s: %w", slot, err)
	}
	fmt.Fprintf(cmd.OutOrStdout(), "replication slot %s dropped\n", slot)
	return nil
}

// openReceiver opens the repository for WAL writes (compressed at the WAL level) and returns
// the receiver's options from the configuration: the command and the server share it.
func (a *app) openReceiver(ctx context.Context) (*repo.Repo, wal.ReceiveOptions, error) {
	s := a.cfg.WAL.Stream
	if a.cfg.Postgres.Conn == "" {
		return nil, wal.ReceiveOptions{}, errors.New("no server to stream from: set --conn, postgres.conn or PGHARBOR_POSTGRES_CONN")
	}
	if a.cfg.Compression.Type != "none" {
		a.cfg.Compression.Level = a.cfg.Compression.WALLevel
		if a.cfg.Compression.Level == 0 {
			a.cfg.Compression.Level = defaultWALLevel
		}
	}
	r, err := a.openRepo(ctx, false)
	if err != nil {
		return nil, wal.ReceiveOptions{}, err
	}
	return r, wal.ReceiveOptions{
		ConnString: a.cfg.Postgres.Conn, Slot: s.Slot, CreateSlot: s.CreateSlot == nil || *s.CreateSlot, ApplicationName: s.ApplicationName,
		FlushInterval: s.FlushInterval, FlushBytes: int64(s.FlushMB) << 20, Synchronous: s.Synchronous, Logger: a.logger,
	}, nil
}

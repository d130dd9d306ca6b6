//! Command-line arguments.

use clap::{Args, CommandFactory, Parser, Subcommand};
use std::ffi::{OsStr, OsString};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "coffer",
    version,
    about = "Back up and restore a whole application stack into one deduplicated, encrypted repository",
    after_help = "Repository: --repo or COFFER_REPO (a path or s3://bucket/prefix). Passphrase: \
COFFER_PASSWORD, COFFER_PASSWORD_FILE, the config file, or a prompt. With no repository named, \
coffer uses a default local repository with a generated key file."
)]
pub struct Cli {
    /// Repository location: a directory or s3://bucket/prefix
    #[arg(long, short = 'r', env = "COFFER_REPO", global = true)]
    pub repo: Option<String>,
    /// TOML configuration file
    #[arg(long, env = "COFFER_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Read the passphrase from this file
    #[arg(long, env = "COFFER_PASSWORD_FILE", global = true)]
    pub password_file: Option<PathBuf>,
    /// Print only errors
    #[arg(long, short = 'q', global = true)]
    pub quiet: bool,
    /// More detail (repeat for debug output)
    #[arg(long, short = 'v', action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Use no local cache: read all metadata from the repository and keep nothing on this
    /// host (the cache is in $COFFER_CACHE, else $XDG_CACHE_HOME/coffer or ~/.cache/coffer)
    #[arg(long, global = true)]
    pub no_cache: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
// Parsed once per run: the size of the largest variant (restore's many options) costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// Create a new repository
    Init(InitArgs),
    /// Back up paths, a stream from standard input, a database, or a command's output
    Backup(BackupArgs),
    /// List snapshots
    Snapshots(SnapshotsArgs),
    /// List the contents of a snapshot
    Ls(LsArgs),
    /// Restore a snapshot into a directory, a PostgreSQL database or a running Redis server
    Restore(RestoreArgs),
    /// Write one file or stream of a snapshot to standard output
    Dump(DumpArgs),
    /// Verify the repository (exit 0 only when everything is sound)
    Check(CheckArgs),
    /// Copy snapshots to another repository (a [repositories.NAME] of the config, created
    /// `init --like` this one), without reading the sources again: only missing blobs move
    Copy(CopyArgs),
    /// Remove snapshots according to a retention policy
    Forget(ForgetArgs),
    /// Remove data that no snapshot needs
    Prune(PruneArgs),
    /// Manage passphrases (key slots)
    #[command(subcommand)]
    Key(KeyCommand),
    /// Remove stale locks
    Unlock(UnlockArgs),
    /// The local metadata cache: index, snapshots and trees kept on this host
    #[command(subcommand)]
    Cache(CacheCommand),
    /// Archive a WAL file: PostgreSQL's archive_command (`coffer wal-push %p`)
    WalPush(WalPushArgs),
    /// Push the WAL that wal-push spooled for the wal = "async" repositories into them
    /// (--repo NAME: only that one), emptying the spool (exit 0 once it is empty)
    WalCopy(WalCopyArgs),
    /// Fetch an archived WAL file: PostgreSQL's restore_command (`coffer wal-fetch %f %p`)
    WalFetch(WalFetchArgs),
    /// Check the WAL archive for gaps from each physical base backup to the newest segment,
    /// across timelines, and print the recoverable window (exit 3 on a gap)
    WalVerify(WalVerifyArgs),
    /// List or release holds on archived WAL (taken by `restore --pgdata` for its recovery;
    /// forget keeps the WAL they hold)
    #[command(subcommand)]
    WalHold(WalHoldCommand),
    /// Each declared source's last successful backup and its age against the source's RPO,
    /// the last failure, and the recoverable window of physical PostgreSQL sources (exit 1
    /// when a source is out of its RPO)
    Status(StatusArgs),
    /// Restore drills: restore each source's newest snapshot (or --snapshot) into scratch
    /// resources that coffer creates and removes, verify it, run its checks and measure the
    /// RTO (exit 3 when a check fails)
    Drill(DrillArgs),
    /// The history of restore drills
    Drills(DrillsArgs),
    /// The backup service: run every scheduled source and repository job on time, without
    /// overlap, until SIGTERM (SIGHUP reloads the config)
    Run(RunArgs),
    /// Print units that run coffer as a service: systemd (a service for `coffer run`),
    /// systemd-timer (a oneshot service and a timer per scheduled job), cron (crontab lines)
    /// or kubernetes (a Deployment for `coffer run`, or --cronjob); from the --config file
    Generate(GenerateArgs),
    /// Print the version
    Version,
}

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// What to generate
    #[arg(value_enum)]
    pub kind: GenerateKind,
    /// systemd-timer, cron and kubernetes --cronjob: only this declared source (repeatable;
    /// default: every scheduled source and the [service] prune, check and wal_verify jobs)
    #[arg(long = "source", value_name = "NAME")]
    pub sources: Vec<String>,
    /// kubernetes: one CronJob per scheduled job instead of a Deployment running `coffer run`
    #[arg(long)]
    pub cronjob: bool,
    /// kubernetes: the container image, with coffer on its PATH (default coffer:latest)
    #[arg(long)]
    pub image: Option<String>,
    /// The coffer binary the units run (default: this one)
    #[arg(long, value_name = "PATH")]
    pub bin: Option<PathBuf>,
    /// Write the files into this directory (mode 0644) instead of printing them
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// With --out: replace files that exist
    #[arg(long, requires = "out")]
    pub force: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum GenerateKind {
    /// coffer.service, running `coffer run`
    Systemd,
    /// coffer-JOB.service and coffer-JOB.timer per scheduled job
    SystemdTimer,
    /// crontab lines
    Cron,
    /// a Deployment running `coffer run`, or CronJobs with --cronjob
    Kubernetes,
}

#[derive(Args, Debug)]
pub struct InitArgs {
    /// zstd compression level for new data (0 = off)
    #[arg(long, value_parser = clap::value_parser!(i32).range(0..=22))]
    pub compression: Option<i32>,
    /// Target pack size in MiB
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=512))]
    pub pack_size: u64,
    /// Cut and name blobs as repository NAME does (a [repositories.NAME] of the config, or
    /// `primary`), so that `coffer copy` between them moves only missing blobs
    #[arg(long, value_name = "NAME")]
    pub like: Option<String>,
}

#[derive(Args, Debug)]
pub struct BackupArgs {
    /// Files and directories to back up
    pub paths: Vec<PathBuf>,
    /// Read the data to back up from standard input
    #[arg(long, conflicts_with = "paths")]
    pub stdin: bool,
    /// Dump a PostgreSQL database with pg_dump (URL like postgresql://user@host:5432/db;
    /// without one, DATABASE_URL and then PGHOST/PGPORT/PGUSER/PGDATABASE)
    #[arg(long, value_name = "URL", num_args = 0..=1, conflicts_with_all = ["paths", "stdin"])]
    pub postgres: Option<Option<String>>,
    /// With --postgres: dump every database of the server, plus roles and tablespaces
    #[arg(long, requires = "postgres")]
    pub all_databases: bool,
    /// With --postgres: pg_dump processes per database at once, all in the dump's snapshot:
    /// the largest tables' data is dumped in up to N-1 streams of its own beside the main
    /// dump (1 = a single stream)
    #[arg(long, value_name = "N", default_value_t = 2, requires = "postgres",
          value_parser = clap::value_parser!(u32).range(1..=32))]
    pub dump_jobs: u32,
    /// With --postgres: the smallest table (heap + TOAST bytes) that gets a stream of its
    /// own; for tests
    #[arg(long, value_name = "BYTES", default_value_t = 64 << 20, requires = "postgres", hide = true)]
    pub dump_min_table_bytes: u64,
    /// With --postgres: a physical base backup of the data directory (for point-in-time
    /// recovery with the WAL archive) instead of a pg_dump
    #[arg(long, requires = "postgres", conflicts_with = "all_databases")]
    pub physical: bool,
    /// With --physical: the server's data directory (default: its data_directory setting)
    #[arg(long, requires = "physical")]
    pub pgdata: Option<PathBuf>,
    /// With --physical: seconds to wait, in all, for every WAL segment from the backup's start to
    /// its stop to be archived
    #[arg(long, default_value_t = 300, requires = "physical")]
    pub archive_timeout: u64,
    /// Back up a Redis (or Valkey) server's RDB (URL like redis://[user:password@]host:port,
    /// rediss:// for TLS, or a Unix socket path; without one, REDIS_URL and then
    /// 127.0.0.1:6379). The password may also come from REDISCLI_AUTH or the config file
    #[arg(long, value_name = "URL", num_args = 0..=1,
          conflicts_with_all = ["paths", "stdin", "postgres"])]
    pub redis: Option<Option<String>>,
    /// With --redis: sync (the replication protocol, from anywhere) or bgsave (BGSAVE, then
    /// the file the server wrote: on the Redis host only, for servers that refuse SYNC)
    #[arg(long, value_name = "METHOD", default_value = "sync", requires = "redis",
          value_parser = ["sync", "bgsave"])]
    pub redis_method: String,
    /// With --redis: CA certificates (PEM) for a rediss:// server (default: [redis] tls_ca,
    /// then the system's CA bundle)
    #[arg(long, value_name = "FILE", requires = "redis")]
    pub redis_tls_ca: Option<PathBuf>,
    /// With --redis: a client certificate (PEM), with --redis-tls-key
    #[arg(
        long,
        value_name = "FILE",
        requires = "redis",
        requires = "redis_tls_key"
    )]
    pub redis_tls_cert: Option<PathBuf>,
    /// With --redis: the client certificate's private key (PEM)
    #[arg(long, value_name = "FILE", requires = "redis_tls_cert")]
    pub redis_tls_key: Option<PathBuf>,
    /// Back up this declared source of the config file (repeatable; with no paths or
    /// source options, every declared source is backed up)
    #[arg(long = "source", value_name = "NAME",
          conflicts_with_all = ["paths", "stdin", "postgres", "redis"])]
    pub sources: Vec<String>,
    /// Back up every declared source; with none declared, the stack that DATABASE_URL,
    /// SUPABASE_DB_URL, REDIS_URL and UPLOADS_DIR describe
    #[arg(long, conflicts_with_all = ["paths", "stdin", "postgres", "redis", "sources"])]
    pub all: bool,
    /// With the stack: do not apply the sources' keep rules after their backups
    #[arg(long)]
    pub no_forget: bool,
    /// File name for the stdin stream inside the snapshot
    #[arg(long, default_value = "stdin", requires = "stdin")]
    pub stdin_name: String,
    /// Run a command and back up its output: `--command -- CMD ARGS...` (run without a
    /// shell). It must exit 0 (or a --success-code) and produce at least --min-bytes, or no
    /// snapshot is written (exit 8)
    #[arg(long, conflicts_with_all = ["paths", "stdin", "postgres", "redis"])]
    pub command: bool,
    /// With --command: the source's name, which is the output's name in the snapshot
    /// (default: the file name of CMD)
    #[arg(long, value_name = "NAME", requires = "command")]
    pub name: Option<String>,
    /// With --command: stdout (its standard output, streamed) or dir (the files it writes
    /// into a fresh private directory, given as {output_dir} in its arguments and as
    /// COFFER_OUTPUT_DIR)
    #[arg(long, value_name = "OUTPUT", default_value = "stdout", requires = "command",
          value_parser = ["stdout", "dir"])]
    pub command_output: String,
    /// With --command: stop the command (its whole process group) after this long, e.g. 90s,
    /// 30m, 1h30m; the backup then fails
    #[arg(long, value_name = "DURATION", requires = "command")]
    pub command_timeout: Option<String>,
    /// With --command: fail when the output is smaller than this many bytes
    #[arg(long, value_name = "BYTES", default_value_t = 1, requires = "command")]
    pub min_bytes: u64,
    /// With --command: an exit status that means success (repeatable; default 0)
    #[arg(long = "success-code", value_name = "N", requires = "command",
          value_parser = clap::value_parser!(i32).range(0..=255))]
    pub success_codes: Vec<i32>,
    /// With --command: the command and its arguments, after `--`
    #[arg(last = true, value_name = "CMD")]
    pub command_argv: Vec<String>,
    /// Add a tag (repeatable)
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Exclude paths matching a glob (repeatable); without '/' it matches names anywhere
    #[arg(long = "exclude")]
    pub excludes: Vec<String>,
    /// Do not descend into other file systems below the paths (a mount point is stored as
    /// an empty directory)
    #[arg(long, short = 'x')]
    pub one_file_system: bool,
    /// Snapshot time (RFC 3339), for imports and tests
    #[arg(long)]
    pub time: Option<String>,
    /// Record this host name instead of the machine's
    #[arg(long)]
    pub host: Option<String>,
    /// Print the result as JSON on stdout
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct SnapshotsArgs {
    #[arg(long)]
    pub json: bool,
    /// Only snapshots with this tag
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Only snapshots of this declared source (repeatable)
    #[arg(long = "source", value_name = "NAME")]
    pub sources: Vec<String>,
}

#[derive(Args, Debug)]
pub struct DrillArgs {
    /// Drill this declared source (repeatable; default: those with a drill table, else all)
    #[arg(long = "source", value_name = "NAME")]
    pub sources: Vec<String>,
    /// Drill this snapshot (id prefix) instead of the newest
    #[arg(long)]
    pub snapshot: Option<String>,
    /// Physical PostgreSQL: recover to this time instead of the end of the WAL archive
    #[arg(long)]
    pub target_time: Option<String>,
    /// Print the report as JSON on stdout
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct DrillsArgs {
    /// Only the drills of this declared source (repeatable)
    #[arg(long = "source", value_name = "NAME")]
    pub sources: Vec<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Run every due job once (missed or never run), then exit: for an external scheduler
    #[arg(long)]
    pub once: bool,
    /// With --once: print what ran as JSON on stdout
    #[arg(long, requires = "once")]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Print the report as JSON on stdout
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct LsArgs {
    /// Snapshot id (prefix) or "latest"
    pub snapshot: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
// Flags of one kind of restore require its group, not its flag: clap waives a `requires`
// on an argument that conflicts with one present (--target), so `requires = "to_redis"` would
// let `--target DIR --flush` through.
#[command(group(clap::ArgGroup::new("online").args(["to_postgres", "to_redis", "stack"])))]
#[command(group(clap::ArgGroup::new("pg_restore").args(["to_postgres"])))]
#[command(group(clap::ArgGroup::new("redis_restore").args(["to_redis"])))]
pub struct RestoreArgs {
    /// Snapshot id (prefix) or "latest"; with --pgdata it may be left out (the newest base
    /// backup that finished before the target)
    #[arg(required_unless_present_any = ["pgdata", "stack"], conflicts_with = "stack")]
    pub snapshot: Option<String>,
    /// Restore the whole stack of the config file's [sources.NAME] tables, each source to its
    /// own target, in [stack] restore_order: every snapshot read and verified and every
    /// target reached first, then before_restore, the sources, after_restore
    #[arg(long, conflicts_with_all = ["pgdata", "includes", "delta", "sync"])]
    pub stack: bool,
    /// With --stack: each source as of this time (RFC 3339 or "YYYY-MM-DD HH:MM:SS[+TZ]"):
    /// its newest snapshot at or before it, and a physical PostgreSQL source recovered to
    /// exactly this time (default: the newest snapshots, the end of the WAL archive)
    #[arg(long, value_name = "TIME", requires = "stack")]
    pub time: Option<String>,
    /// With --stack: restore only this source (repeatable)
    #[arg(long = "source", value_name = "NAME", requires = "stack")]
    pub sources: Vec<String>,
    /// Directory to restore into
    #[arg(
        long,
        short = 't',
        required_unless_present_any = ["to_postgres", "pgdata", "to_redis", "stack"],
        conflicts_with_all = ["to_postgres", "pgdata", "to_redis"]
    )]
    pub target: Option<PathBuf>,
    /// Lay out a physical base backup as a PostgreSQL data directory here, set up for
    /// point-in-time recovery from the WAL archive (start PostgreSQL on it to recover)
    #[arg(long, value_name = "DIR", conflicts_with_all = ["to_postgres", "to_redis"])]
    pub pgdata: Option<PathBuf>,
    /// Recover up to this time (RFC 3339 or "YYYY-MM-DD HH:MM:SS[+TZ]"; local time without a zone)
    #[arg(long, requires = "pgdata", group = "recovery_target")]
    pub target_time: Option<String>,
    /// Recover up to this WAL location (e.g. 0/3000060)
    #[arg(long, requires = "pgdata", group = "recovery_target")]
    pub target_lsn: Option<String>,
    /// Recover up to this transaction id
    #[arg(long, requires = "pgdata", group = "recovery_target")]
    pub target_xid: Option<String>,
    /// Recover up to this named restore point (pg_create_restore_point)
    #[arg(long, requires = "pgdata", group = "recovery_target")]
    pub target_name: Option<String>,
    /// Stop as soon as the base backup is consistent
    #[arg(long, requires = "pgdata", group = "recovery_target")]
    pub target_immediate: bool,
    /// Stop just before the target instead of just after it
    #[arg(long, requires = "recovery_target")]
    pub target_exclusive: bool,
    /// What the server does at the target
    #[arg(long, requires = "pgdata", value_parser = ["promote", "pause", "shutdown"])]
    pub target_action: Option<String>,
    /// Timeline to recover along: a number, current or latest (PostgreSQL's default)
    #[arg(long, requires = "pgdata")]
    pub target_timeline: Option<String>,
    /// With --pgdata: replace the contents of a non-empty data directory
    #[arg(long, requires = "pgdata", conflicts_with = "delta")]
    pub force: bool,
    /// Update a directory that holds an older copy in place: files whose content already
    /// matches (read and hashed here) are kept, the rest is written, and what the snapshot
    /// does not hold is removed
    #[arg(long, conflicts_with_all = ["to_postgres", "to_redis"])]
    pub delta: bool,
    /// With --target: exit only once everything restored is on disk (write-back started
    /// file by file, one syncfs at the end); --pgdata always does this
    #[arg(long, requires = "target")]
    pub sync: bool,
    /// With --pgdata: restore a tablespace (by name or OID) to DIR instead of its original
    /// location (repeatable)
    #[arg(long, value_name = "NAME=DIR", requires = "pgdata", value_parser = parse_tablespace_map)]
    pub tablespace_map: Vec<(String, PathBuf)>,
    /// With --pgdata: hours the hold on the WAL this recovery needs lasts after the
    /// recovery's last wal-fetch (forget keeps held WAL)
    #[arg(long, value_name = "HOURS", default_value_t = 24, requires = "pgdata",
          value_parser = clap::value_parser!(u64).range(1..=8784))]
    pub wal_hold_hours: u64,
    /// Restore only this path of the snapshot (repeatable)
    #[arg(long = "include")]
    pub includes: Vec<String>,
    /// Restore a PostgreSQL dump into the database named by this URL (created if missing)
    #[arg(long, value_name = "URL", num_args = 0..=1)]
    pub to_postgres: Option<Option<String>>,
    /// Which database of a multi-database snapshot to restore
    #[arg(long, requires = "pg_restore")]
    pub database: Option<String>,
    /// Parallel pg_restore jobs
    #[arg(long, short = 'j', default_value_t = 1, requires = "pg_restore",
          value_parser = clap::value_parser!(u32).range(1..=64))]
    pub jobs: u32,
    /// Replace a non-empty database (--to-postgres), flush databases that hold keys
    /// (--to-redis --flush), or replace targets that hold data (--stack) without asking
    #[arg(long, short = 'y', requires = "online")]
    pub yes: bool,
    /// Do not back up a non-empty target before replacing or flushing it
    #[arg(long, requires = "online")]
    pub no_safety_backup: bool,
    /// Restore only this table (NAME or SCHEMA.NAME, repeatable) beside the live one, as NAME_restore
    #[arg(long = "table", requires = "pg_restore")]
    pub tables: Vec<String>,
    /// With one --table: the name to restore it as
    #[arg(long = "as", value_name = "NEWNAME", requires = "tables")]
    pub rename: Option<String>,
    /// Read and verify everything, show what would be done, change nothing
    #[arg(long, requires = "online")]
    pub dry_run: bool,
    /// pg_restore --no-owner: do not set object owners
    #[arg(long, requires = "pg_restore")]
    pub no_owner: bool,
    /// pg_restore --no-privileges: do not restore grants
    #[arg(long, requires = "pg_restore")]
    pub no_privileges: bool,
    /// Directory for the verified dump that pg_restore reads (default: the temp directory)
    #[arg(long, requires = "pg_restore")]
    pub spool_dir: Option<PathBuf>,
    /// Restore a Redis RDB snapshot into the running server at this URL
    /// (redis://[user:password@]host:port[/db], rediss:// for TLS, or a socket path; without
    /// one, REDIS_URL, then 127.0.0.1:6379), key by key with RESTORE
    #[arg(long, value_name = "URL", num_args = 0..=1, conflicts_with = "includes")]
    pub to_redis: Option<Option<String>>,
    /// With --to-redis: restore only database N of the snapshot, into the URL's database
    /// when it names one, else into database N
    #[arg(long, value_name = "N", requires = "redis_restore")]
    pub db: Option<u32>,
    /// With --to-redis: restore only keys matching this glob (repeatable; * ? [a-z], and a backslash
    /// to escape, matched on the key's bytes)
    #[arg(long = "key", value_name = "PATTERN", requires = "redis_restore")]
    pub keys: Vec<String>,
    /// With --to-redis: overwrite keys that exist in the target (otherwise they are refused
    /// before anything is written)
    #[arg(long, requires = "redis_restore")]
    pub replace: bool,
    /// With --to-redis: empty each target database restored into first (FLUSHDB), after a
    /// safety backup of the target; asks on a terminal, needs --yes otherwise
    #[arg(long, requires = "redis_restore")]
    pub flush: bool,
    /// With --to-redis: CA certificates (PEM) for a rediss:// target
    #[arg(long, value_name = "FILE", requires = "redis_restore")]
    pub redis_tls_ca: Option<PathBuf>,
    /// With --to-redis: client certificate (PEM) for a rediss:// target
    #[arg(long, value_name = "FILE", requires = "redis_restore")]
    pub redis_tls_cert: Option<PathBuf>,
    /// With --to-redis: client key (PEM) for a rediss:// target
    #[arg(long, value_name = "FILE", requires = "redis_restore")]
    pub redis_tls_key: Option<PathBuf>,
    /// Print the result as JSON on stdout
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct DumpArgs {
    /// Snapshot id (prefix) or "latest"
    pub snapshot: String,
    /// Path of the file or stream inside the snapshot (may be left out when the snapshot
    /// holds a single stream, e.g. one database dump)
    pub path: Option<String>,
    /// Write into this directory instead of standard output: every stream of a split
    /// PostgreSQL dump, with the pg_restore commands to run printed in order
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Read and verify all data
    #[arg(long, conflicts_with = "read_data_subset")]
    pub read_data: bool,
    /// Read and verify a random part of the data, e.g. 10%
    #[arg(long)]
    pub read_data_subset: Option<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ForgetArgs {
    /// Snapshots to forget explicitly (in addition to the policy)
    pub snapshots: Vec<String>,
    #[arg(long, allow_negative_numbers = true)]
    pub keep_last: Option<i64>,
    #[arg(long, allow_negative_numbers = true)]
    pub keep_hourly: Option<i64>,
    #[arg(long, allow_negative_numbers = true)]
    pub keep_daily: Option<i64>,
    #[arg(long, allow_negative_numbers = true)]
    pub keep_weekly: Option<i64>,
    #[arg(long, allow_negative_numbers = true)]
    pub keep_monthly: Option<i64>,
    #[arg(long, allow_negative_numbers = true)]
    pub keep_yearly: Option<i64>,
    /// Keep snapshots within this duration of the newest (e.g. 1y2m3d4h)
    #[arg(long)]
    pub keep_within: Option<String>,
    /// Always keep snapshots with this tag
    #[arg(long)]
    pub keep_tag: Vec<String>,
    /// Only consider snapshots with this tag
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Only consider snapshots of this declared source (repeatable)
    #[arg(long = "source", value_name = "NAME")]
    pub sources: Vec<String>,
    /// Group snapshots by these fields before applying the policy
    #[arg(long, default_value = "host,paths")]
    pub group_by: String,
    /// Show what would be removed, remove nothing
    #[arg(long, short = 'n')]
    pub dry_run: bool,
    /// Run prune afterwards
    #[arg(long)]
    pub prune: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct CopyArgs {
    /// Snapshots to copy (ids, prefixes or `latest`); default: every snapshot the
    /// destination does not have yet
    pub snapshots: Vec<String>,
    /// The destination: a [repositories.NAME] of the config file
    #[arg(long, value_name = "NAME")]
    pub to: String,
    /// The origin (default: the primary repository, `primary`)
    #[arg(long, value_name = "NAME")]
    pub from: Option<String>,
    /// Only the snapshots of these declared sources
    #[arg(long, value_name = "NAME", conflicts_with = "snapshots")]
    pub source: Vec<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct PruneArgs {
    /// Show what would be removed, remove nothing
    #[arg(long, short = 'n')]
    pub dry_run: bool,
    /// Repack a pack when more than this percentage of its blobs' bytes is unused
    #[arg(long, default_value_t = 10.0)]
    pub max_unused: f64,
    /// Print the report as JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// List key slots
    List {
        #[arg(long)]
        json: bool,
    },
    /// Add a passphrase (from COFFER_NEW_PASSWORD, --new-password-file or a prompt)
    Add {
        #[arg(long, env = "COFFER_NEW_PASSWORD_FILE")]
        new_password_file: Option<PathBuf>,
        /// A write-only key: it backs up, pushes WAL, lists snapshots and forgets, but
        /// cannot read anything back (the first one upgrades the repository)
        #[arg(long)]
        write_only: bool,
    },
    /// Remove a key slot by id (prefix)
    Remove { id: String },
    /// Change the passphrase of the key in use
    Passwd {
        #[arg(long, env = "COFFER_NEW_PASSWORD_FILE")]
        new_password_file: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
pub enum CacheCommand {
    /// Remove the local cache of every repository (safe at any time: commands then read the
    /// repository instead)
    Clean {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
pub struct UnlockArgs {
    /// Remove all locks, not only stale ones
    #[arg(long)]
    pub remove_all: bool,
}

#[derive(Args, Debug)]
pub struct WalPushArgs {
    /// The file to archive (%p: a path relative to the data directory)
    pub path: PathBuf,
    /// Parallel workers; above 1, also archive the other ready segments ahead (1 = only PATH)
    #[arg(long, short = 'j', default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub jobs: u32,
}

#[derive(Args, Debug)]
pub struct WalCopyArgs {
    /// Print the report as JSON on stdout
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct WalFetchArgs {
    /// The archived file's name (%f)
    pub name: String,
    /// Where to write it (%p)
    pub dest: PathBuf,
    /// Fetch this many following segments ahead, in parallel
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(0..=64))]
    pub prefetch: u32,
    /// The WAL hold of the recovery this serves, refreshed every few minutes (restore
    /// --pgdata writes it into restore_command)
    #[arg(long, value_name = "ID", value_parser = parse_hold_id)]
    pub hold: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum WalHoldCommand {
    /// List the holds, with what took them and when they expire
    List {
        #[arg(long)]
        json: bool,
    },
    /// Remove holds by id (prefix); retention may then remove the WAL they held
    Release {
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

fn parse_hold_id(s: &str) -> Result<String, String> {
    if coffer::sources::postgres::wal::hold::valid_id(s) {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s:?} is not a WAL hold id (32 lowercase hex digits)"
        ))
    }
}

#[derive(Args, Debug)]
pub struct WalVerifyArgs {
    /// Print the report as JSON on stdout
    #[arg(long)]
    pub json: bool,
}

/// The subcommand named on a command line, found without parsing it fully (so also when
/// the rest of it is wrong): the first word that is neither an option nor the value of a
/// global option. Which global options take a value comes from [`Cli`] itself.
pub fn subcommand_of(args: &[OsString]) -> Option<&OsStr> {
    let cmd = Cli::command();
    let valued: Vec<&clap::Arg> = cmd
        .get_arguments()
        .filter(|a| a.get_action().takes_values())
        .collect();
    let mut words = args.iter().skip(1);
    while let Some(w) = words.next() {
        let s = w.to_string_lossy();
        if s == "--" {
            return words.next().map(OsString::as_os_str);
        }
        if let Some(long) = s.strip_prefix("--") {
            if !long.contains('=') && valued.iter().any(|a| a.get_long() == Some(long)) {
                words.next();
            }
        } else if let Some(shorts) = s.strip_prefix('-').filter(|r| !r.is_empty()) {
            // A cluster like `-qv` or `-r/path`: a short option that takes a value takes
            // the rest of the word, or the next word when it ends the cluster.
            let chars: Vec<char> = shorts.chars().collect();
            if let Some(i) = chars
                .iter()
                .position(|c| valued.iter().any(|a| a.get_short() == Some(*c)))
            {
                if i + 1 == chars.len() {
                    words.next();
                }
            }
        } else {
            return Some(w);
        }
    }
    None
}

fn parse_tablespace_map(s: &str) -> Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() && !v.is_empty() => Ok((k.to_string(), PathBuf::from(v))),
        _ => Err(format!("expected NAME=DIR or OID=DIR, not {s:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(words: &[&str]) -> Option<String> {
        let args: Vec<OsString> = std::iter::once("coffer")
            .chain(words.iter().copied())
            .map(OsString::from)
            .collect();
        subcommand_of(&args).map(|s| s.to_string_lossy().into_owned())
    }

    #[test]
    fn finds_the_subcommand_past_global_options() {
        assert_eq!(sub(&["wal-fetch", "--bogus"]).as_deref(), Some("wal-fetch"));
        assert_eq!(
            sub(&["--config", "wal-push", "wal-fetch", "a", "b"]).as_deref(),
            Some("wal-fetch")
        );
        assert_eq!(
            sub(&["--config=/c", "-qv", "-r", "/r", "wal-fetch"]).as_deref(),
            Some("wal-fetch")
        );
        assert_eq!(
            sub(&["-qr", "/r", "--password-file", "/p", "wal-fetch"]).as_deref(),
            Some("wal-fetch")
        );
        assert_eq!(sub(&["-r/r", "backup", "x"]).as_deref(), Some("backup"));
        assert_eq!(
            sub(&["--repo", "wal-fetch", "backup"]).as_deref(),
            Some("backup")
        );
        assert_eq!(sub(&["-v"]), None);
        assert_eq!(sub(&[]), None);
    }
}

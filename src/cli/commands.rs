//! One function per command: call the operation, print its report.

use super::args::*;
use super::context::{prompt_line, Context};
use anyhow::Result;
use coffer::error::Error;
use coffer::ops::{self, backup::Source, forget::ForgetOptions};
use coffer::repo::check::ReadData;
use coffer::repo::forget::Policy;
use coffer::repo::restore::RestoreOptions;
use coffer::sources::command::{default_name, CommandOptions, Output as CommandOutput, Program};
use coffer::sources::postgres::pitr::PitrOptions;
use coffer::sources::postgres::restore::PgRestoreOptions;
use coffer::sources::postgres::DumpSplit;
use coffer::sources::redis::conn::ConnOptions;
use coffer::sources::redis::restore::RedisRestoreOptions;
use coffer::sources::redis::{Method, RedisOptions};
use coffer::sources::CommonOptions;
use serde::Serialize;
use std::path::PathBuf;
use std::time::Duration;

/// `--json` output with its keys sorted, as these commands have always printed it.
fn print_sorted<T: Serialize>(v: &T, pretty: bool) -> Result<()> {
    let v = serde_json::to_value(v)?;
    if pretty {
        outln!("{}", serde_json::to_string_pretty(&v)?)?;
    } else {
        outln!("{v}")?;
    }
    Ok(())
}

pub fn init(ctx: &Context, a: &InitArgs) -> Result<()> {
    let like = match &a.like {
        Some(name) => Some(ctx.access.repository(name)?.open()?),
        None => None,
    };
    ctx.init(a.compression, a.pack_size, like)
}

fn parse_time(s: &Option<String>) -> Result<Option<chrono::DateTime<chrono::FixedOffset>>> {
    s.as_ref()
        .map(|t| {
            chrono::DateTime::parse_from_rfc3339(t).map_err(|e| {
                Error::usage(format!(
                    "--time {t:?} is not RFC 3339 (e.g. 2024-05-01T02:00:00Z): {e}"
                ))
                .into()
            })
        })
        .transpose()
}

/// The options of a Redis connection: the config file's `[redis]` table, overridden by the
/// command line's TLS files.
pub fn redis_options(
    ctx: &Context,
    url: Option<String>,
    method: &str,
    [ca, cert, key]: [&Option<PathBuf>; 3],
) -> Result<RedisOptions> {
    let mut conn = ConnOptions::from_settings(&ctx.access.config.redis)?;
    for (slot, given) in [
        (&mut conn.tls_ca, ca),
        (&mut conn.tls_cert, cert),
        (&mut conn.tls_key, key),
    ] {
        if given.is_some() {
            slot.clone_from(given);
        }
    }
    Ok(RedisOptions {
        url,
        method: Method::parse(method)?,
        conn,
        common: CommonOptions::default(),
    })
}

/// The command source of `backup --command -- CMD ARGS...`.
fn command_options(a: &BackupArgs) -> Result<CommandOptions> {
    if a.command_argv.is_empty() {
        return Err(Error::usage(
            "--command needs the command after --: coffer backup --command -- CMD ARGS...",
        )
        .into());
    }
    let program = Program::Argv(a.command_argv.clone());
    let name = a.name.clone().unwrap_or_else(|| default_name(&program));
    let mut opts = CommandOptions::new(&name, program);
    opts.output = CommandOutput::parse(&a.command_output)?;
    opts.timeout = match &a.command_timeout {
        Some(t) => Some(
            coffer::config::parse_duration(t)
                .map_err(|e| Error::usage(format!("--command-timeout: {e}")))?,
        ),
        None => None,
    };
    opts.min_bytes = a.min_bytes;
    opts.success_codes = a.success_codes.clone();
    Ok(opts)
}

pub fn backup(ctx: &Context, a: &BackupArgs) -> Result<()> {
    let common = CommonOptions {
        tags: a.tags.clone(),
        time: parse_time(&a.time)?,
        hostname: a.host.clone(),
        ..CommonOptions::default()
    };
    let ad_hoc = !a.paths.is_empty()
        || a.stdin
        || a.postgres.is_some()
        || a.redis.is_some()
        || a.command
        || !a.command_argv.is_empty();
    if a.all || !a.sources.is_empty() || (!ad_hoc && !ctx.access.config.sources.is_empty()) {
        return backup_stack(ctx, a, common);
    }
    let mut stdin = std::io::stdin();
    let source = match (&a.postgres, a.physical) {
        (Some(conn), true) => Source::Physical {
            conn: conn.clone(),
            pgdata: a.pgdata.clone(),
            archive_timeout: Duration::from_secs(a.archive_timeout),
        },
        (Some(conn), false) => Source::Postgres {
            conn: conn.clone(),
            all_databases: a.all_databases,
            databases: Vec::new(),
            split: DumpSplit {
                jobs: a.dump_jobs as usize,
                min_table_bytes: a.dump_min_table_bytes,
            },
        },
        _ if a.redis.is_some() => Source::Redis(redis_options(
            ctx,
            a.redis.clone().flatten(),
            &a.redis_method,
            [&a.redis_tls_ca, &a.redis_tls_cert, &a.redis_tls_key],
        )?),
        _ if a.command => Source::Command(command_options(a)?),
        _ if !a.command_argv.is_empty() => return Err(Error::usage(
            "a command after -- is only run with --command: coffer backup --command -- CMD ARGS...",
        )
        .into()),
        _ if a.stdin => Source::Stream {
            reader: &mut stdin,
            name: a.stdin_name.clone(),
        },
        _ if !a.paths.is_empty() => Source::Files {
            paths: a.paths.clone(),
            excludes: a.excludes.clone(),
            one_file_system: a.one_file_system,
        },
        _ => {
            return Err(Error::usage(
                "give paths to back up, --stdin, --postgres [URL], --redis [URL] or --command -- \
                 CMD ARGS...; or declare \
                 the stack's sources in the config file (--config), or use --all",
            )
            .into())
        }
    };
    let repo = ctx.open_or_create_default()?;
    let p = ctx.progress(source.label(), None);
    let r = ops::backup::backup(&repo, source, common, &p);
    p.finish();
    let r = r?;
    if a.json {
        return print_sorted(&r, false);
    }
    ctx.say(&r.to_string());
    Ok(())
}

/// `backup` of the declared stack (or, with `--all` and none declared, of the stack the
/// environment describes).
fn backup_stack(ctx: &Context, a: &BackupArgs, common: CommonOptions) -> Result<()> {
    let mut config = ctx.access.config.clone();
    if config.sources.is_empty() && a.all {
        let (sources, found) = ops::stack::from_environment(&|v| std::env::var(v).ok());
        if sources.is_empty() {
            return Err(Error::usage(
                "--all: the config file declares no [sources], and none of DATABASE_URL, \
                 SUPABASE_DB_URL, REDIS_URL and UPLOADS_DIR is set",
            )
            .into());
        }
        ctx.say(&format!(
            "no [sources] in the config file; from the environment: {}",
            found.join(", ")
        ));
        config.sources = sources;
    }
    let opts = ops::stack::StackOptions {
        sources: a.sources.clone(),
        forget: !a.no_forget,
        common,
    };
    let repo = ctx.open_or_create_default()?;
    let r = ops::stack::backup_stack(&repo, &config, &opts, &|what| ctx.progress(what, None))?;
    if a.json {
        print_sorted(&r, false)?;
    } else {
        ctx.say(&r.to_string());
    }
    r.verdict()
}

/// `coffer run`: the service, until SIGTERM (or with `--once`, every due job once).
pub fn run_service(ctx: &Context, cli: &Cli, a: &RunArgs) -> Result<()> {
    use coffer::service::daemon;
    type Opened = (
        std::sync::Arc<coffer::repo::Repository>,
        std::sync::Arc<coffer::sources::postgres::pitr::FetchConfig>,
    );
    let open = |config: &coffer::config::Config| -> Result<Opened> {
        let access = coffer::ops::access::Access::new(
            cli.repo.clone(),
            cli.password_file.clone(),
            config.clone(),
            Box::new(super::context::prompt),
        )?
        .reporting_to(ctx.events());
        let fetch = std::sync::Arc::new(access.fetch_config()?);
        Ok((access.open()?, fetch))
    };
    let opts = daemon::RunOptions {
        once: a.once,
        config_path: cli.config.clone(),
    };
    let state = std::sync::Arc::new(std::sync::Mutex::new(daemon::ServiceState::default()));
    let log = ctx.events();
    let mode = ctx.mode;
    let progress_for = move |what: &str| {
        let p = super::render::Terminal::progress(if mode == super::render::Mode::Bar {
            super::render::Mode::Lines
        } else {
            mode
        });
        p.begin(what, None);
        p
    };
    let r = daemon::run(
        ctx.access.config.clone(),
        &open,
        &opts,
        state,
        &log,
        &progress_for,
    )?;
    if let Some(r) = r {
        if a.json {
            print_sorted(&r, false)?;
        }
        return r.verdict();
    }
    Ok(())
}

pub fn status(ctx: &Context, a: &StatusArgs) -> Result<()> {
    let r = ops::status::status(&ctx.open()?, &ctx.access.config)?;
    if a.json {
        print_sorted(&r, true)?;
    } else {
        outln!("{r}")?;
    }
    r.verdict()
}

pub fn drill(ctx: &Context, a: &DrillArgs) -> Result<()> {
    let opts = ops::drill::DrillOptions {
        sources: a.sources.clone(),
        snapshot: a.snapshot.clone(),
        target_time: a
            .target_time
            .as_deref()
            .map(|t| {
                ops::restore::parse_time(t).ok_or_else(|| {
                    Error::usage(format!(
                        "--target-time {t:?} is not a time (e.g. 2024-05-01T14:03:00+02:00)"
                    ))
                })
            })
            .transpose()?,
        fetch: ctx.access.fetch_config()?,
    };
    let repo = ctx.open()?;
    // SIGTERM or SIGINT: stop the scratch servers and remove the scratch directories at
    // once; the drill then fails on them, records itself and releases its lock.
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])?;
    let handle = signals.handle();
    let events = ctx.events();
    let watcher = std::thread::spawn(move || {
        if signals.forever().next().is_some() {
            coffer::cancel::request();
            let gone = coffer::sources::postgres::scratch::remove_all_now();
            events.warn(&format!(
                "interrupted: removed the scratch resources of the drill ({})",
                if gone.is_empty() {
                    "none left".to_string()
                } else {
                    gone.join(", ")
                }
            ));
        }
    });
    let r = ops::drill::drill(
        &repo,
        &ctx.access.config,
        &opts,
        &ctx.progress("drill", None),
    );
    handle.close();
    let _ = watcher.join();
    let r = r?;
    if a.json {
        print_sorted(&r, false)?;
    } else {
        ctx.say(&r.to_string());
    }
    r.verdict()
}

pub fn drills(ctx: &Context, a: &DrillsArgs) -> Result<()> {
    let list = ops::drill::history(&*ctx.open()?, &a.sources)?;
    if a.json {
        return print_sorted(&list, true);
    }
    super::out(format_args!("{}", ops::drill::HistoryTable(&list)))?;
    Ok(())
}

pub fn snapshots(ctx: &Context, a: &SnapshotsArgs) -> Result<()> {
    let list = ops::snapshots::snapshots(&*ctx.open()?, &a.tags, &a.sources)?;
    if a.json {
        return print_sorted(&list, true);
    }
    super::out(format_args!("{}", ops::snapshots::Table(&list)))?;
    Ok(())
}

pub fn ls(ctx: &Context, a: &LsArgs) -> Result<()> {
    ops::ls::ls(&*ctx.open()?, &a.snapshot, &mut |e| {
        if a.json {
            outln!("{}", serde_json::to_string(e)?)
        } else {
            outln!("{e}")
        }
    })
}

pub fn restore(ctx: &Context, a: &RestoreArgs) -> Result<()> {
    if a.stack {
        return restore_stack(ctx, a);
    }
    let repo = ctx.open()?;
    let spec = a.snapshot.as_deref().unwrap_or("latest");
    if let Some(dir) = &a.pgdata {
        let opts = PitrOptions {
            snapshot: a.snapshot.clone(),
            pgdata: dir.clone(),
            target: ops::restore::recovery_target(
                a.target_time.as_deref(),
                a.target_lsn.as_deref(),
                a.target_xid.as_deref(),
                a.target_name.as_deref(),
                a.target_immediate,
            )?,
            exclusive: a.target_exclusive,
            action: a.target_action.clone(),
            timeline: a.target_timeline.clone(),
            force: a.force,
            delta: a.delta,
            tablespace_map: a.tablespace_map.clone(),
            fetch: ctx.access.fetch_config()?,
            wal_hold_expiry: Duration::from_secs(a.wal_hold_hours * 3600),
        };
        let p = ctx.progress("restore pgdata", None);
        let r = ops::restore::pgdata(&repo, &opts, &p);
        p.finish();
        let r = r?;
        if a.json {
            return print_sorted(&r, false);
        }
        ctx.say(&r.to_string());
        return Ok(());
    }
    if let Some(conn) = &a.to_postgres {
        return restore_to_postgres(ctx, a, &repo, spec, conn.clone());
    }
    if let Some(url) = &a.to_redis {
        return restore_to_redis(ctx, a, &repo, spec, url.clone());
    }
    let opts = RestoreOptions {
        target: a.target.clone().expect("clap requires --target"),
        includes: a.includes.clone(),
        tree: None,
        delta: a.delta,
        sync: a.sync,
    };
    let p = ctx.progress("restore", None);
    let r = ops::restore::files(&repo, spec, &opts, &p);
    p.finish();
    let r = r?;
    if a.json {
        return print_sorted(&r, false);
    }
    ctx.say(&r.to_string());
    Ok(())
}

fn restore_stack(ctx: &Context, a: &RestoreArgs) -> Result<()> {
    let time = a
        .time
        .as_deref()
        .map(|t| {
            ops::restore::parse_time(t).ok_or_else(|| {
                Error::usage(format!(
                    "--time {t:?} is not a time (e.g. 2024-05-01T14:03:00+02:00 or \"2024-05-01 14:03:00\")"
                ))
            })
        })
        .transpose()?;
    let config = &ctx.access.config;
    // The plan needs the stack before the repository is opened (and a passphrase asked).
    ops::restore_stack::restore_sequence(config, &a.sources)?;
    let opts = ops::restore_stack::StackRestoreOptions {
        time,
        sources: a.sources.clone(),
        target: a.target.clone(),
        dry_run: a.dry_run,
        yes: a.yes,
        safety_backup: !a.no_safety_backup,
        fetch: ctx.access.fetch_config()?,
        wal_hold_expiry: Duration::from_secs(a.wal_hold_hours * 3600),
    };
    let repo = ctx.open()?;
    let p = ctx.progress("restore --stack", None);
    let mut confirm = |question: &str, word: &str| confirm_on_terminal(&p, question, word, word);
    let r = ops::restore_stack::restore_stack(&repo, config, &opts, &p, &mut confirm);
    p.finish();
    let r = r?;
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&r)?)?;
    } else if ctx.mode != super::render::Mode::Quiet {
        eprintln!("{r}");
    }
    r.verdict()
}

fn restore_to_postgres(
    ctx: &Context,
    a: &RestoreArgs,
    repo: &std::sync::Arc<coffer::repo::Repository>,
    spec: &str,
    conn: Option<String>,
) -> Result<()> {
    if !a.includes.is_empty() {
        return Err(Error::usage("--include restores files; use --table for tables").into());
    }
    let opts = PgRestoreOptions {
        conn,
        database: a.database.clone(),
        jobs: a.jobs,
        yes: a.yes,
        safety_backup: !a.no_safety_backup,
        tables: a.tables.clone(),
        rename: a.rename.clone(),
        dry_run: a.dry_run,
        no_owner: a.no_owner,
        no_privileges: a.no_privileges,
        spool_dir: a.spool_dir.clone(),
        target: None,
    };
    let p = ctx.progress("restore postgres", None);
    let mut confirm = |question: &str, db: &str| {
        confirm_on_terminal(&p, question, &format!("the database name ({db})"), db)
    };
    let r = ops::restore::database(repo, spec, &opts, &p, &mut confirm);
    p.finish();
    let r = r?;
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&r)?)?;
    } else {
        ctx.say(&r.plan());
        let rest = r.to_string();
        if !rest.is_empty() {
            ctx.say(&rest);
        }
    }
    r.verdict()
}

/// Ask `question` and have the user type `word` (shown as `what`) to go on; false without a
/// terminal, where the caller needs `--yes` instead.
fn confirm_on_terminal(
    p: &coffer::progress::Progress,
    question: &str,
    what: &str,
    word: &str,
) -> Result<bool> {
    use std::io::IsTerminal;
    if !std::io::stdin().is_terminal() {
        return Ok(false);
    }
    p.log(question);
    let answer = prompt_line(&format!("Type {what} to go on: "))?;
    Ok(answer.trim() == word)
}

fn restore_to_redis(
    ctx: &Context,
    a: &RestoreArgs,
    repo: &std::sync::Arc<coffer::repo::Repository>,
    spec: &str,
    url: Option<String>,
) -> Result<()> {
    let conn = redis_options(
        ctx,
        url.clone(),
        "sync",
        [&a.redis_tls_ca, &a.redis_tls_cert, &a.redis_tls_key],
    )?
    .conn;
    let opts = RedisRestoreOptions {
        url,
        conn,
        db: a.db,
        keys: a.keys.clone(),
        replace: a.replace,
        flush: a.flush,
        yes: a.yes,
        safety_backup: !a.no_safety_backup,
        dry_run: a.dry_run,
    };
    let p = ctx.progress("restore redis", None);
    let mut confirm = |question: &str, word: &str| confirm_on_terminal(&p, question, word, word);
    let r = ops::restore::redis(repo, spec, &opts, &p, &mut confirm);
    p.finish();
    let r = r?;
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&r)?)?;
    } else {
        ctx.say(&r.plan_text());
        ctx.say(&r.to_string());
    }
    r.verdict()
}

pub fn dump(ctx: &Context, a: &DumpArgs) -> Result<()> {
    use ops::dump::Output;
    let repo = ctx.open()?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, super::Stdout::lock());
    let to = match &a.out {
        Some(dir) => Output::Dir(dir),
        None => Output::Stream(&mut out),
    };
    let r = ops::dump::dump(&repo, &a.snapshot, a.path.as_deref(), to)?;
    std::io::Write::flush(&mut out)?;
    for c in &r.commands {
        outln!("{c}")?;
    }
    Ok(())
}

pub fn check(ctx: &Context, a: &CheckArgs) -> Result<()> {
    let read = match &a.read_data_subset {
        _ if a.read_data => ReadData::All,
        Some(s) => ops::check::read_data_subset(s)?,
        None => ReadData::None,
    };
    let repo = ctx.open()?;
    let r = ops::check::check(&repo, read, &ctx.events())?;
    if a.json {
        print_sorted(&r, true)?;
    }
    for e in r.problems() {
        eprintln!("{e}");
    }
    ctx.say(&r.verdict()?);
    Ok(())
}

pub fn forget(ctx: &Context, a: &ForgetArgs) -> Result<()> {
    let within = a.keep_within.as_ref().map(|w| {
        w.parse()
            .map_err(|e: anyhow::Error| Error::usage(e.to_string()))
    });
    let mut policy = Policy {
        last: a.keep_last.unwrap_or(0),
        hourly: a.keep_hourly.unwrap_or(0),
        daily: a.keep_daily.unwrap_or(0),
        weekly: a.keep_weekly.unwrap_or(0),
        monthly: a.keep_monthly.unwrap_or(0),
        yearly: a.keep_yearly.unwrap_or(0),
        within: within.transpose()?,
        keep_tags: a.keep_tag.clone(),
    };
    // `--repo NAME forget` with no rule and no snapshot: that repository's own `keep`.
    if let (true, true, Some(keep)) = (policy.is_empty(), a.snapshots.is_empty(), ctx.access.keep())
    {
        policy = keep.clone();
    }
    let opts = ForgetOptions {
        snapshots: a.snapshots.clone(),
        policy,
        tags: a.tags.clone(),
        sources: a.sources.clone(),
        group_by: a
            .group_by
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect(),
        dry_run: a.dry_run,
        prune: a.prune,
    };
    opts.check()?;
    let on_group = |g: &ops::forget::Group| {
        if !a.json {
            ctx.say(&g.to_string());
        }
    };
    let r = ops::forget::forget(&ctx.open()?, &opts, &on_group, &ctx.events())?;
    if a.json {
        print_sorted(&r, true)?;
    }
    if let Some(p) = &r.prune {
        ctx.say(&p.to_string());
    }
    Ok(())
}

pub fn copy(ctx: &Context, a: &CopyArgs) -> Result<()> {
    let from = match &a.from {
        Some(name) => ctx.access.repository(name)?,
        None => ctx.access.primary()?,
    };
    let to = ctx.access.repository(&a.to)?;
    let (src, dst) = (from.open()?, to.open()?);
    let opts = ops::copy::CopyOptions {
        snapshots: a.snapshots.clone(),
        sources: a.source.clone(),
        catch_up: false,
    };
    let from_name = a.from.clone().unwrap_or_else(|| "primary".into());
    let p = ctx.progress("copy", None);
    let r = ops::copy::copy(&src, &dst, (&from_name, &a.to), &opts, &p);
    p.finish();
    let r = r?;
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&r)?)?;
    } else {
        ctx.say(&r.to_string());
    }
    Ok(())
}

pub fn prune(ctx: &Context, a: &PruneArgs) -> Result<()> {
    let r = ops::prune::prune(&ctx.open()?, a.dry_run, a.max_unused, &ctx.events())?;
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&r)?)?;
    } else {
        ctx.say(&r.to_string());
    }
    Ok(())
}

pub fn key(ctx: &Context, k: &KeyCommand) -> Result<()> {
    let repo = ctx.open()?;
    let short = |n: &str| ops::short_name(n).to_string();
    match k {
        KeyCommand::List { json: true } => print_sorted(&ops::key::list(&repo)?, true)?,
        KeyCommand::List { json: false } => {
            for k in ops::key::list(&repo)? {
                outln!("{k}")?;
            }
        }
        KeyCommand::Add {
            new_password_file,
            write_only: false,
        } => {
            let pw = ctx.access.new_passphrase(new_password_file.as_deref())?;
            let name = ops::key::add(&repo, &pw)?;
            ctx.say(&format!("added key {}", short(&name)));
        }
        KeyCommand::Add {
            new_password_file,
            write_only: true,
        } => {
            repo.require_full("key add --write-only")?;
            let pw = ctx.access.new_passphrase(new_password_file.as_deref())?;
            ctx.say(&ops::key::add_write_only(&repo, &pw)?.to_string());
        }
        KeyCommand::Remove { id } => {
            let name = ops::key::remove(&repo, id)?;
            ctx.say(&format!("removed key {}", short(&name)));
        }
        KeyCommand::Passwd { new_password_file } => {
            let pw = ctx.access.new_passphrase(new_password_file.as_deref())?;
            let name = ops::key::passwd(repo, &pw)?;
            ctx.say(&format!("passphrase changed (new key {})", short(&name)));
        }
    }
    Ok(())
}

pub fn unlock(ctx: &Context, a: &UnlockArgs) -> Result<()> {
    let r = ops::unlock::unlock(&*ctx.open()?, a.remove_all)?;
    ctx.say(&r.to_string());
    Ok(())
}

pub fn cache(ctx: &Context, c: &CacheCommand) -> Result<()> {
    let CacheCommand::Clean { json } = c;
    let r = coffer::repo::cache::clean()
        .map_err(|e| anyhow::anyhow!("cannot clean the local cache: {e}"))?;
    if *json {
        print_sorted(&r, true)
    } else {
        ctx.say(&r.to_string());
        Ok(())
    }
}

pub fn wal_push(ctx: &Context, a: &WalPushArgs) -> Result<()> {
    let r = ops::wal_push::wal_push(&ctx.access, &a.path, a.jobs as usize)?;
    if ctx.verbose() && r.files.is_some() {
        ctx.say(&r.to_string());
    }
    Ok(())
}

pub fn wal_copy(ctx: &Context, a: &WalCopyArgs) -> Result<()> {
    let r = ops::wal_copy::wal_copy(
        &ctx.access.config,
        ctx.access.name.as_deref(),
        &ctx.events(),
    )?;
    if a.json {
        print_sorted(&r, true)?;
    } else {
        ctx.say(&r.to_string());
    }
    r.verdict()
}

pub fn wal_fetch(ctx: &Context, a: &WalFetchArgs) -> Result<()> {
    let r = ops::wal_fetch::wal_fetch(
        &ctx.access,
        &a.name,
        &a.dest,
        a.prefetch as usize,
        a.hold.as_deref(),
    )?;
    if r.found {
        return Ok(());
    }
    if ctx.verbose() {
        ctx.say(&format!("{} is not in the archive", a.name));
    }
    Err(super::WalNotFound.into())
}

pub fn wal_hold(ctx: &Context, c: &WalHoldCommand) -> Result<()> {
    let repo = ctx.open()?;
    match c {
        WalHoldCommand::List { json } => {
            let holds = ops::wal_hold::list(&repo)?;
            if *json {
                return print_sorted(&holds, true);
            }
            for h in &holds {
                outln!("{h}")?;
            }
            if holds.is_empty() {
                ctx.say("no WAL holds");
            }
        }
        WalHoldCommand::Release { ids } => {
            for prefix in ids {
                let id = ops::wal_hold::release(&repo, prefix)?;
                ctx.say(&format!("released WAL hold {id}"));
            }
        }
    }
    Ok(())
}

pub fn wal_verify(ctx: &Context, a: &WalVerifyArgs) -> Result<()> {
    let r = ops::wal_verify::wal_verify(&ctx.open()?)?;
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&r)?)?;
    } else {
        super::out(format_args!("{r}"))?;
    }
    r.verdict()
}

/// `generate`: the units, printed or written into `--out`.
pub fn generate(ctx: &Context, cli: &Cli, a: &GenerateArgs) -> Result<()> {
    use coffer::service::units::{self, KubeOptions, Setup};
    let Some(config) = &cli.config else {
        return Err(Error::usage(
            "coffer generate writes the config file's path into the units: give it with \
             --config FILE (or COFFER_CONFIG)",
        )
        .into());
    };
    let config_path = std::path::absolute(config)?;
    let text = std::fs::read_to_string(&config_path).map_err(|e| {
        Error::usage(format!(
            "cannot read config file {}: {e}",
            config_path.display()
        ))
    })?;
    let bin = match &a.bin {
        Some(b) => std::path::absolute(b)?,
        None => std::env::current_exe().map_err(|e| {
            Error::usage(format!(
                "cannot find the path of this coffer binary ({e}): give it with --bin PATH"
            ))
        })?,
    };
    let wrong = |opt: &str, kinds: &str| -> Result<()> {
        Err(Error::usage(format!("{opt} is for {kinds}")).into())
    };
    match a.kind {
        GenerateKind::Systemd if !a.sources.is_empty() => {
            return wrong(
                "--source",
                "systemd-timer, cron and kubernetes --cronjob (coffer run backs up every source)",
            )
        }
        GenerateKind::Kubernetes if !a.sources.is_empty() && !a.cronjob => {
            return wrong("--source", "kubernetes --cronjob, systemd-timer and cron")
        }
        GenerateKind::Systemd | GenerateKind::SystemdTimer | GenerateKind::Cron if a.cronjob => {
            return wrong("--cronjob", "kubernetes")
        }
        GenerateKind::Systemd | GenerateKind::SystemdTimer | GenerateKind::Cron
            if a.image.is_some() =>
        {
            return wrong("--image", "kubernetes")
        }
        GenerateKind::Kubernetes if a.bin.is_some() => {
            return wrong(
                "--bin",
                "systemd, systemd-timer and cron (a pod runs the image's coffer: see --image)",
            )
        }
        _ => {}
    }
    // Loaded again from its absolute path, so that its relative paths (password_file…)
    // are absolute in the units.
    let loaded = coffer::config::Config::load(&config_path)?;
    let setup = Setup {
        config: &loaded,
        config_path: &config_path,
        bin: &bin,
        variables: units::config_variables(&text),
        literal_secrets: units::literal_secrets(&text),
        default_home: ops::access::default_home()
            .ok()
            .and_then(|h| std::path::absolute(h).ok()),
    };
    let mut out = match a.kind {
        GenerateKind::Systemd => units::systemd(&setup)?,
        GenerateKind::SystemdTimer => units::systemd_timers(&setup, &a.sources)?,
        GenerateKind::Cron => units::crontab(&setup, &a.sources)?,
        GenerateKind::Kubernetes => units::kubernetes(
            &setup,
            &KubeOptions {
                image: a.image.as_deref().unwrap_or("coffer:latest"),
                cronjob: a.cronjob,
                sources: &a.sources,
            },
        )?,
    };
    if a.kind != GenerateKind::Kubernetes && !bin.exists() {
        out.notes
            .push(format!("{} does not exist on this machine", bin.display()));
    }
    if cli.repo.is_some() || cli.password_file.is_some() {
        out.notes.push(
            "--repo and --password-file (or COFFER_REPO, COFFER_PASSWORD_FILE) are not written \
             into the units: they use the config file's repository and password_file"
                .into(),
        );
    }
    match &a.out {
        None => {
            let many = out.files.len() > 1;
            for (i, f) in out.files.iter().enumerate() {
                if many {
                    if i > 0 {
                        outln!()?;
                    }
                    outln!("### {}", f.name)?;
                }
                super::out(format_args!("{}", f.text))?;
            }
        }
        Some(dir) => write_units(ctx, dir, &out.files, a.force)?,
    }
    for n in &out.notes {
        ctx.say(&format!("note: {n}"));
    }
    Ok(())
}

/// Write generated files into `dir` (mode 0644): none when one exists and `force` is not
/// given.
fn write_units(
    ctx: &Context,
    dir: &std::path::Path,
    files: &[coffer::service::units::UnitFile],
    force: bool,
) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::usage(format!("cannot create {}: {e}", dir.display())))?;
    if !force {
        if let Some(f) = files.iter().find(|f| dir.join(&f.name).exists()) {
            return Err(Error::usage(format!(
                "{} exists: give --force to replace it (nothing was written)",
                dir.join(&f.name).display()
            ))
            .into());
        }
    }
    for f in files {
        let path = dir.join(&f.name);
        let mut o = std::fs::OpenOptions::new();
        o.write(true).mode(0o644);
        if force {
            o.create(true).truncate(true);
        } else {
            o.create_new(true);
        }
        let mut file = o
            .open(&path)
            .map_err(|e| Error::usage(format!("cannot write {}: {e}", path.display())))?;
        file.write_all(f.text.as_bytes())?;
        file.set_permissions(std::fs::Permissions::from_mode(0o644))?;
        file.sync_all()?;
        ctx.say(&format!("wrote {}", path.display()));
    }
    Ok(())
}

//! What differs between PostgreSQL and Redis: how the server is started in its container (with
//! the plan's limits), how the broker tells it accepts connections, sets it up, and makes and
//! revokes a binding's own credentials — all through `docker exec` of psql / redis-cli inside the
//! service container, so the broker needs no route to the instance's network.
//!
//! - PostgreSQL: the cluster lives in `/data/pgdata` on the volume (initdb at first start; local
//!   socket peer auth for the broker, scram-sha-256 over TCP). The instance's database `db` is
//!   owned by the NOLOGIN role `pier_owner`; each binding is a LOGIN role, member of `pier_owner`,
//!   whose sessions run `SET ROLE pier_owner`, so every binding sees and owns the same tables.
//!   Unbinding stops the role's logins, terminates its sessions, and drops it.
//! - Redis: data (append-only file) and the ACL file `users.acl` live in `/data/redis`. The
//!   `default` user is off; the broker uses `pier-admin` (its password only in the broker's
//!   state; the container sees its SHA-256); each binding is an ACL user with every command but
//!   the dangerous ones, saved to the ACL file. Unbinding deletes the user (Redis disconnects its
//!   clients) and kills its clients.

use std::time::Duration;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::catalog::{Engine, Plan};
use crate::docker::{self, ExecOutput};
use crate::state::{BindingRecord, InstanceRecord};

/// Where the volume is mounted in the container.
pub const DATA_DIR: &str = "/data";
/// The PostgreSQL database of every instance.
pub const DATABASE: &str = "db";
const OWNER_ROLE: &str = "pier_owner";
const REDIS_ADMIN: &str = "pier-admin";
const EXEC_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections PostgreSQL keeps for superusers (the broker's psql) above the plan's.
const RESERVED: u32 = 3;

const POSTGRES_START: &str = r#"set -eu
BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
D=/data/pgdata
if [ ! -s "$D/PG_VERSION" ]; then
  install -d -o postgres -g postgres -m 0700 "$D"
  runuser -u postgres -- "$BIN/initdb" -D "$D" -U postgres -E UTF8 --locale=C.UTF-8 \
    --auth-local=peer --auth-host=scram-sha-256 >/dev/null
  echo "host all all 0.0.0.0/0 scram-sha-256" >>"$D/pg_hba.conf"
fi
install -d -o postgres -g postgres -m 2775 /run/postgresql
exec runuser -u postgres -- "$BIN/postgres" -D "$D" -c listen_addresses='*' -c port=5432 \
  -c unix_socket_directories=/run/postgresql -c max_connections="$PIER_MAX_CONNECTIONS" \
  -c superuser_reserved_connections="$PIER_RESERVED" -c shared_buffers="$PIER_SHARED_BUFFERS" \
  -c password_encryption=scram-sha-256
"#;

const REDIS_START: &str = r#"set -eu
D=/data/redis
install -d -o redis -g redis -m 0750 "$D"
if [ ! -s "$D/users.acl" ]; then
  printf 'user default off\nuser pier-admin on #%s ~* &* +@all\n' "$PIER_ADMIN_HASH" >"$D/users.acl"
  chown redis:redis "$D/users.acl"
  chmod 0600 "$D/users.acl"
fi
exec runuser -u redis -- redis-server --bind 0.0.0.0 --port 6379 --protected-mode no \
  --dir "$D" --appendonly yes --aclfile "$D/users.acl" --daemonize no \
  --maxmemory "$PIER_MAXMEMORY" --maxmemory-policy noeviction --maxclients "$PIER_MAXCLIENTS"
"#;

/// The container's command and environment for `plan`.
pub fn start_command(
    engine: Engine,
    plan: &Plan,
    admin_password: &str,
) -> (Vec<String>, Vec<String>) {
    let cmd = |script: &str| vec!["bash".to_string(), "-c".to_string(), script.to_string()];
    match engine {
        Engine::Postgresql => (
            cmd(POSTGRES_START),
            vec![
                format!("PIER_MAX_CONNECTIONS={}", plan.connections + RESERVED),
                format!("PIER_RESERVED={RESERVED}"),
                format!("PIER_SHARED_BUFFERS={}MB", plan.memory_mib / 4),
            ],
        ),
        Engine::Redis => (
            cmd(REDIS_START),
            vec![
                format!(
                    "PIER_ADMIN_HASH={}",
                    hex::encode(Sha256::digest(admin_password))
                ),
                // Leave a quarter of the container's memory to the process and its buffers.
                format!("PIER_MAXMEMORY={}mb", plan.memory_mib * 3 / 4),
                format!("PIER_MAXCLIENTS={}", plan.connections),
            ],
        ),
    }
}

fn failed(what: &str, out: &ExecOutput) -> anyhow::Error {
    let text = format!("{}{}", out.stderr.trim(), out.stdout.trim());
    anyhow::anyhow!("{what} failed (exit {}): {}", out.code, text.trim())
}

async fn psql(
    docker: &docker::Engine,
    inst: &InstanceRecord,
    database: &str,
    sql: &str,
) -> anyhow::Result<String> {
    let cmd = [
        "psql",
        "-X",
        "-q",
        "-At",
        "-v",
        "ON_ERROR_STOP=1",
        "-h",
        "/run/postgresql",
        "-d",
        database,
        "-c",
        sql,
    ];
    let out = docker
        .exec(&inst.container, "postgres", &[], &cmd, EXEC_TIMEOUT)
        .await?;
    if out.code != 0 {
        return Err(failed("psql", &out));
    }
    Ok(out.stdout)
}

async fn redis_cli(
    docker: &docker::Engine,
    inst: &InstanceRecord,
    args: &[&str],
) -> anyhow::Result<String> {
    let mut cmd = vec![
        "redis-cli",
        "--no-auth-warning",
        "-h",
        "127.0.0.1",
        "--user",
        REDIS_ADMIN,
    ];
    cmd.extend_from_slice(args);
    let env = [format!("REDISCLI_AUTH={}", inst.admin_password)];
    let out = docker
        .exec(&inst.container, "redis", &env, &cmd, EXEC_TIMEOUT)
        .await?;
    let reply = out.stdout.trim();
    let error = [
        "ERR",
        "WRONGPASS",
        "NOPERM",
        "NOAUTH",
        "Could not connect",
        "LOADING",
    ]
    .iter()
    .any(|p| reply.starts_with(p));
    if out.code != 0 || error {
        return Err(failed(
            &format!("redis-cli {}", args.first().unwrap_or(&"")),
            &out,
        ));
    }
    Ok(reply.to_string())
}

/// Whether the server accepts connections (on TCP, as apps connect), authenticated as the broker.
pub async fn ready(docker: &docker::Engine, inst: &InstanceRecord) -> anyhow::Result<bool> {
    match inst.engine {
        Engine::Postgresql => {
            let cmd = ["pg_isready", "-q", "-h", "127.0.0.1", "-p", "5432"];
            let out = docker
                .exec(&inst.container, "postgres", &[], &cmd, EXEC_TIMEOUT)
                .await?;
            Ok(out.code == 0)
        }
        Engine::Redis => Ok(redis_cli(docker, inst, &["PING"])
            .await
            .is_ok_and(|r| r == "PONG")),
    }
}

/// Makes what bindings need once the server is up (again: safe to repeat).
pub async fn set_up(docker: &docker::Engine, inst: &InstanceRecord) -> anyhow::Result<()> {
    match inst.engine {
        Engine::Postgresql => {
            let has_owner = psql(
                docker,
                inst,
                "postgres",
                &format!("SELECT 1 FROM pg_roles WHERE rolname = '{OWNER_ROLE}'"),
            )
            .await?;
            if has_owner.trim().is_empty() {
                psql(
                    docker,
                    inst,
                    "postgres",
                    &format!("CREATE ROLE {OWNER_ROLE} NOLOGIN"),
                )
                .await?;
            }
            let has_db = psql(
                docker,
                inst,
                "postgres",
                &format!("SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'"),
            )
            .await?;
            if has_db.trim().is_empty() {
                psql(
                    docker,
                    inst,
                    "postgres",
                    &format!("CREATE DATABASE {DATABASE} OWNER {OWNER_ROLE}"),
                )
                .await?;
            }
            psql(
                docker,
                inst,
                DATABASE,
                &format!(
                    "ALTER SCHEMA public OWNER TO {OWNER_ROLE}; \
                     REVOKE ALL ON DATABASE {DATABASE} FROM PUBLIC; \
                     REVOKE CONNECT ON DATABASE postgres FROM PUBLIC"
                ),
            )
            .await?;
            Ok(())
        }
        Engine::Redis => Ok(()),
    }
}

/// Makes the binding's role / ACL user (or resets its password when it exists).
pub async fn bind(
    docker: &docker::Engine,
    inst: &InstanceRecord,
    b: &BindingRecord,
) -> anyhow::Result<()> {
    match inst.engine {
        Engine::Postgresql => {
            let (u, p) = (&b.username, &b.password);
            let sql = format!(
                "DO $$ BEGIN \
                   IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{u}') THEN \
                     ALTER ROLE \"{u}\" LOGIN PASSWORD '{p}'; \
                   ELSE \
                     CREATE ROLE \"{u}\" LOGIN PASSWORD '{p}' IN ROLE {OWNER_ROLE}; \
                   END IF; \
                 END $$; \
                 ALTER ROLE \"{u}\" SET role = '{OWNER_ROLE}'; \
                 GRANT CONNECT, TEMPORARY ON DATABASE {DATABASE} TO \"{u}\""
            );
            psql(docker, inst, "postgres", &sql).await?;
            Ok(())
        }
        Engine::Redis => {
            let pass = format!(">{}", b.password);
            redis_cli(
                docker,
                inst,
                &[
                    "ACL",
                    "SETUSER",
                    &b.username,
                    "reset",
                    "on",
                    &pass,
                    "~*",
                    "&*",
                    "+@all",
                    "-@dangerous",
                ],
            )
            .await?;
            redis_cli(docker, inst, &["ACL", "SAVE"]).await?;
            Ok(())
        }
    }
}

/// Revokes the binding: no new logins, its sessions ended, the role / user gone.
pub async fn unbind(
    docker: &docker::Engine,
    inst: &InstanceRecord,
    b: &BindingRecord,
) -> anyhow::Result<()> {
    let u = &b.username;
    match inst.engine {
        Engine::Postgresql => {
            let exists = psql(
                docker,
                inst,
                "postgres",
                &format!("SELECT 1 FROM pg_roles WHERE rolname = '{u}'"),
            )
            .await?;
            if exists.trim().is_empty() {
                return Ok(());
            }
            psql(
                docker,
                inst,
                "postgres",
                &format!(
                    "ALTER ROLE \"{u}\" NOLOGIN; \
                     SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{u}'"
                ),
            )
            .await?;
            psql(
                docker,
                inst,
                DATABASE,
                &format!("REASSIGN OWNED BY \"{u}\" TO {OWNER_ROLE}; DROP OWNED BY \"{u}\""),
            )
            .await?;
            psql(
                docker,
                inst,
                "postgres",
                &format!("DROP ROLE IF EXISTS \"{u}\""),
            )
            .await?;
            Ok(())
        }
        Engine::Redis => {
            redis_cli(docker, inst, &["ACL", "DELUSER", u]).await?;
            redis_cli(docker, inst, &["CLIENT", "KILL", "USER", u])
                .await
                .ok();
            redis_cli(docker, inst, &["ACL", "SAVE"]).await?;
            Ok(())
        }
    }
}

/// The credentials a binding hands the app.
pub fn credentials(inst: &InstanceRecord, b: &BindingRecord) -> Value {
    let host = &inst.container;
    let (u, p) = (&b.username, &b.password);
    match inst.engine {
        Engine::Postgresql => json!({
            "host": host,
            "hostname": host,
            "port": 5432,
            "name": DATABASE,
            "database": DATABASE,
            "username": u,
            "password": p,
            "uri": format!("postgres://{u}:{p}@{host}:5432/{DATABASE}"),
            "jdbcUrl": format!("jdbc:postgresql://{host}:5432/{DATABASE}?user={u}&password={p}"),
        }),
        Engine::Redis => json!({
            "host": host,
            "hostname": host,
            "port": 6379,
            "username": u,
            "password": p,
            "uri": format!("redis://{u}:{p}@{host}:6379"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{POSTGRESQL, REDIS};

    #[test]
    fn plans_set_the_server_limits() {
        let (cmd, env) = start_command(Engine::Postgresql, &POSTGRESQL.plans[0], "x");
        assert_eq!(cmd[0], "bash");
        assert!(
            env.contains(&"PIER_MAX_CONNECTIONS=23".to_string()),
            "{env:?}"
        );
        assert!(
            env.contains(&"PIER_SHARED_BUFFERS=64MB".to_string()),
            "{env:?}"
        );
        let (_, env) = start_command(Engine::Redis, &REDIS.plans[1], "secret");
        assert!(env.contains(&"PIER_MAXMEMORY=768mb".to_string()), "{env:?}");
        assert!(env.contains(&"PIER_MAXCLIENTS=100".to_string()), "{env:?}");
        assert!(!env.iter().any(|e| e.contains("secret")), "{env:?}");
    }
}

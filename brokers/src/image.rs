//! The services image: Debian bookworm with PostgreSQL and Redis, built from the stack's script
//! (`stack/build-rootfs.sh --packages …`) by `pier-controller build-services-image`, and
//! imported under a versioned tag. Bump the suffix whenever its contents change.

pub const DEFAULT_IMAGE: &str = "pier-services:bookworm-v1";

/// Debian packages installed in place of the stack's runtimes.
pub const PACKAGES: &str = "postgresql redis-server";

/// Commands that must be in the image afterwards.
pub const COMMANDS: &str = "psql pg_isready redis-server redis-cli runuser";

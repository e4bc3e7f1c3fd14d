//! The origin: a Redis server of the run's own (not the cache's, never faulted) holding, per
//! key, a monotonic version (`origin:ver:k<i>`) and the value of that version
//! (`origin:val:k<i>` = `k<i>|<version>|<writer>`). A write assigns the next version and sets
//! the value in one script, so the origin's value is always its newest version; the versions a
//! key ever had are exactly `1..=` its final counter.

use redis::aio::MultiplexedConnection;

use crate::error::{Context, HarnessError};
use crate::space::KeySpace;

/// `ARGV[1]` the writer, `ARGV[2..]` key ids: each key's version moves on by one and its value
/// is set to that version's; returns the new versions in order.
const WRITE: &str = r"
local out = {}
for i = 2, #ARGV do
  local k = ARGV[i]
  local v = redis.call('INCR', 'origin:ver:' .. k)
  redis.call('SET', 'origin:val:' .. k, k .. '|' .. v .. '|' .. ARGV[1])
  out[#out + 1] = v
end
return out
";

/// A connection to the origin.
#[derive(Clone)]
pub struct Origin {
    conn: MultiplexedConnection,
    write: redis::Script,
}

impl Origin {
    /// Connect to the origin server at `url`.
    pub async fn connect(url: &str) -> Result<Self, HarnessError> {
        let client = redis::Client::open(url).context(|| format!("origin URL {url}"))?;
        let conn = client
            .get_multiplexed_async_connection()
            .await
            .context(|| format!("connect to the origin at {url}"))?;
        Ok(Self { conn, write: redis::Script::new(WRITE) })
    }

    /// Move `keys` on to a new version each, written by `writer`; returns `(key, version)`.
    pub async fn write(&self, keys: &[u32], writer: &str) -> Result<Vec<(u32, u64)>, HarnessError> {
        let mut call = self.write.prepare_invoke();
        call.arg(writer);
        for &k in keys {
            call.arg(KeySpace::key_id(k));
        }
        let versions: Vec<u64> = call
            .invoke_async(&mut self.conn.clone())
            .await
            .context(|| "write to the origin".into())?;
        if versions.len() != keys.len() {
            return Err(HarnessError::new(format!(
                "the origin answered {} versions for {} keys",
                versions.len(),
                keys.len()
            )));
        }
        Ok(keys.iter().copied().zip(versions).collect())
    }

    /// The origin's value of `key` (what the loader answers).
    pub async fn read(&self, key: u32) -> Result<Option<String>, HarnessError> {
        redis::cmd("GET")
            .arg(format!("origin:val:{}", KeySpace::key_id(key)))
            .query_async(&mut self.conn.clone())
            .await
            .context(|| "read the origin".into())
    }

    /// The newest version of every key of `space` (0: never written).
    pub async fn versions(&self, space: KeySpace) -> Result<Vec<u64>, HarnessError> {
        let mut cmd = redis::cmd("MGET");
        for k in space.all() {
            cmd.arg(format!("origin:ver:{}", KeySpace::key_id(k)));
        }
        let got: Vec<Option<u64>> = cmd
            .query_async(&mut self.conn.clone())
            .await
            .context(|| "read the origin's versions".into())?;
        Ok(got.into_iter().map(|v| v.unwrap_or(0)).collect())
    }
}

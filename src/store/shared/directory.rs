//! What every replica holds whole and follows by polling a version: the campaigns, the
//! listener aliases and the genre and artist vocabularies. A change is one script that writes
//! the document and bumps its directory's version; replicas see it at their next poll.

use std::collections::HashMap;

use crate::domain::Campaign;

use super::{Shared, SharedError, blocking, scripts};

/// A directory: one hash of documents and its version, in one slot.
#[derive(Clone, Copy, Debug)]
pub struct Directory {
    entries: &'static str,
    version: &'static str,
}

/// The campaigns by id (JSON documents).
pub const CAMPAIGNS: Directory = Directory { entries: "{cat}:campaigns", version: "{cat}:v" };
/// Listener aliases: alias → canonical id.
pub const ALIASES: Directory = Directory { entries: "{al}:aliases", version: "{al}:v" };

/// A vocabulary's keys: name → id, and the names in id order.
#[derive(Clone, Copy, Debug)]
pub struct Terms {
    ids: &'static str,
    names: &'static str,
}

pub const GENRES: Terms = Terms { ids: "{voc}:genre:ids", names: "{voc}:genre:names" };
pub const ARTISTS: Terms = Terms { ids: "{voc}:artist:ids", names: "{voc}:artist:names" };

impl Shared {
    /// Writes (`Some`) or deletes (`None`) the entry `field` of `directory`, replicated.
    pub async fn put_entry(
        &self,
        directory: Directory,
        field: &str,
        document: Option<&str>,
    ) -> Result<(), SharedError> {
        let mut invocation = scripts::PUT_ENTRY.prepare_invoke();
        invocation.key(directory.entries).key(directory.version).arg(field).arg(document.unwrap_or(""));
        let _version: u64 = self.write_invoke(invocation).await?;
        self.replicated(directory.entries).await
    }

    /// Deletes every alias naming listener `id` (erasure; admin calls, so a walk of the
    /// aliases is affordable).
    pub async fn drop_aliases_of(&self, id: &str) -> Result<(), SharedError> {
        let mut invocation = scripts::DROP_ALIASES_OF.prepare_invoke();
        invocation.key(ALIASES.entries).key(ALIASES.version).arg(id);
        let _dropped: u64 = self.write_invoke(invocation).await?;
        self.replicated(ALIASES.entries).await
    }

    /// Stores `campaign` for every replica.
    pub async fn put_campaign(&self, campaign: &Campaign) -> Result<(), SharedError> {
        self.put_entry(CAMPAIGNS, campaign.id.as_str(), Some(&serde_json::to_string(campaign)?)).await
    }

    /// The campaigns among `ids` the shared store has.
    pub async fn campaigns(&self, ids: &[String]) -> Result<Vec<Campaign>, SharedError> {
        let docs: Vec<Option<String>> =
            self.query(redis::cmd("HMGET").arg(CAMPAIGNS.entries).arg(ids)).await?;
        Ok(docs.into_iter().flatten().map(|d| serde_json::from_str(&d)).collect::<Result<_, _>>()?)
    }

    /// The version of `directory` (0 = never written).
    pub async fn version(&self, directory: Directory) -> Result<u64, SharedError> {
        let v: Option<u64> = self.query(redis::cmd("GET").arg(directory.version)).await?;
        Ok(v.unwrap_or(0))
    }

    /// Every entry of `directory`.
    pub async fn entries(&self, directory: Directory) -> Result<HashMap<String, String>, SharedError> {
        self.query(redis::cmd("HGETALL").arg(directory.entries)).await
    }

    /// The names of `terms` from id `from` on, in id order.
    pub async fn terms_from(&self, terms: Terms, from: usize) -> Result<Vec<String>, SharedError> {
        self.query(redis::cmd("LRANGE").arg(terms.names).arg(from).arg(-1)).await
    }

    /// The id of `name` in `terms`, interning it cluster-wide when new (blocking: called
    /// inside a request's conversion, once per new name in the whole cluster's life).
    pub fn intern_blocking(
        &self,
        terms: Terms,
        name: &str,
        limit: usize,
    ) -> Result<Option<u32>, SharedError> {
        let mut conn = self.blocking.lock().unwrap_or_else(|e| e.into_inner());
        let id: i64 = scripts::INTERN
            .key(terms.ids)
            .key(terms.names)
            .arg(name)
            .arg(limit)
            .invoke(&mut *conn)
            .map_err(|e| blocking("INTERN", e))?;
        Ok(u32::try_from(id).ok())
    }

    /// The names of `terms` in `[from, to)`, blocking (see `intern_blocking`).
    pub fn terms_blocking(&self, terms: Terms, from: usize, to: usize) -> Result<Vec<String>, SharedError> {
        let mut conn = self.blocking.lock().unwrap_or_else(|e| e.into_inner());
        let names: Vec<String> = redis::cmd("LRANGE")
            .arg(terms.names)
            .arg(from)
            .arg(to as i64 - 1)
            .query(&mut *conn)
            .map_err(|e| blocking("LRANGE", e))?;
        Ok(names)
    }
}

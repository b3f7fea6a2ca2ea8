//! A small time-bounded cache for the read-mostly rows every request needs (API keys, binding
//! secrets, prices, tenants). Each replica has its own: a change made through this replica
//! invalidates at once; other replicas see it within the cache's TTL. Entries are bounded: at
//! the limit the cache is emptied (simple, and a cold cache is only slower).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A map whose entries expire after a fixed time.
#[derive(Debug)]
pub struct TtlCache<K, V> {
    entries: Mutex<HashMap<K, (V, Instant)>>,
    ttl: Duration,
    entries_max: usize,
}

impl<K: Eq + Hash + Clone, V: Clone> TtlCache<K, V> {
    /// A cache whose entries live `ttl`, holding at most `entries_max`.
    pub fn new(ttl: Duration, entries_max: usize) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            ttl,
            entries_max: entries_max.max(1),
        }
    }

    /// The fresh value under `key`.
    pub fn get(&self, key: &K) -> Option<V> {
        let entries = self.entries.lock().ok()?;
        let (value, at) = entries.get(key)?;
        (at.elapsed() < self.ttl).then(|| value.clone())
    }

    /// Store `value` under `key`.
    pub fn insert(&self, key: K, value: V) {
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() >= self.entries_max {
                entries.clear();
            }
            entries.insert(key, (value, Instant::now()));
        }
    }

    /// Forget `key`.
    pub fn remove(&self, key: &K) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.remove(key);
        }
    }

    /// Forget every entry whose value matches.
    pub fn remove_where(&self, matches: impl Fn(&V) -> bool) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.retain(|_, (value, _)| !matches(value));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_and_can_be_removed() {
        let cache = TtlCache::new(Duration::from_millis(30), 10);
        cache.insert("a", 1);
        cache.insert("b", 2);
        assert_eq!(cache.get(&"a"), Some(1));
        cache.remove(&"a");
        assert_eq!(cache.get(&"a"), None);
        cache.remove_where(|v| *v == 2);
        assert_eq!(cache.get(&"b"), None);
        cache.insert("c", 3);
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(cache.get(&"c"), None);
    }

    #[test]
    fn a_full_cache_starts_over() {
        let cache = TtlCache::new(Duration::from_secs(60), 2);
        cache.insert(1, 1);
        cache.insert(2, 2);
        cache.insert(3, 3);
        assert_eq!(cache.get(&1), None);
        assert_eq!(cache.get(&3), Some(3));
    }
}

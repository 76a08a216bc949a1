//! `[admin]`: the address of the `/metrics` and `/healthz` listener (empty: none).

use super::problems::{Problems, socket_addrs};
use super::raw::RawAdmin;
use std::net::SocketAddr;

pub(super) fn admin_listen(admin: &RawAdmin, p: &mut Problems) -> Option<SocketAddr> {
    admin.listen.as_ref().and_then(|v| {
        if v.get_ref().is_empty() {
            return None;
        }
        socket_addrs(std::slice::from_ref(v), "admin.listen", p).pop()
    })
}

//! Direct chats the bot opens itself: to ring a Matrix user it has no room with yet.
//!
//! A direct chat is a private room created with `is_direct` and the user invited, and listed
//! in the bot's `m.direct` account data, so that clients show it as a DM and not as a group.

use reqwest::Method;
use serde_json::{json, Value};

use super::client::seg;
use super::{MatrixClient, MatrixError};

impl MatrixClient {
    /// The rooms the bot has joined.
    pub async fn joined_rooms(&self) -> Result<Vec<String>, MatrixError> {
        let v = self
            .call(Method::GET, "/joined_rooms", &[], None, Self::SHORT)
            .await?;
        Ok(v.get("joined_rooms")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|r| r.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Creates a private direct chat with `user` invited; returns its room id.
    pub async fn create_direct_room(&self, user: &str) -> Result<String, MatrixError> {
        let body = json!({
            "preset": "trusted_private_chat",
            "is_direct": true,
            "invite": [user],
        });
        let v = self
            .call(Method::POST, "/createRoom", &[], Some(&body), Self::SHORT)
            .await?;
        v.get("room_id")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| MatrixError::Decode("createRoom response without room_id".into()))
    }

    /// Invites `user` to a room (again: an invite the user declined can be renewed).
    pub async fn invite(&self, room_id: &str, user: &str) -> Result<(), MatrixError> {
        self.call(
            Method::POST,
            &format!("/rooms/{}/invite", seg(room_id)),
            &[],
            Some(&json!({"user_id": user})),
            Self::SHORT,
        )
        .await
        .map(|_| ())
    }

    /// Adds `room_id` to the bot's `m.direct` account data under `user` (read, changed,
    /// written back: the list is the bot's own, nothing else writes it concurrently).
    pub async fn add_direct(
        &self,
        bot: &str,
        user: &str,
        room_id: &str,
    ) -> Result<(), MatrixError> {
        let path = format!("/user/{}/account_data/m.direct", seg(bot));
        let mut direct = match self.call(Method::GET, &path, &[], None, Self::SHORT).await {
            Ok(v) if v.is_object() => v,
            Ok(_) | Err(MatrixError::Api { status: 404, .. }) => json!({}),
            Err(e) => return Err(e),
        };
        let rooms = direct
            .as_object_mut()
            .map(|m| m.entry(user.to_owned()).or_insert_with(|| json!([])));
        if let Some(list) = rooms.and_then(Value::as_array_mut) {
            if !list.iter().any(|r| r == room_id) {
                list.push(json!(room_id));
            }
        }
        self.call(Method::PUT, &path, &[], Some(&direct), Self::SHORT)
            .await
            .map(|_| ())
    }
}

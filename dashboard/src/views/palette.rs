//! The pixels of each meaning in `model::palette` (the one place colours are chosen), readable on
//! the dark theme. Health traffic lights use the same four colours.

use egui::Color32;

use crate::model::palette::Meaning;
use crate::model::sli::Health;

pub const GREEN: Color32 = Color32::from_rgb(0x3f, 0xb9, 0x50);
pub const AMBER: Color32 = Color32::from_rgb(0xe3, 0xa0, 0x08);
pub const RED: Color32 = Color32::from_rgb(0xf0, 0x50, 0x4a);
pub const GREY: Color32 = Color32::from_gray(0x90);
/// Markers without a state meaning (rotations, reloads, starts).
pub const BLUE: Color32 = Color32::from_rgb(0x58, 0xa6, 0xff);

/// The colour of a meaning; `None` leaves the plot's own colour sequence.
pub fn of(m: Meaning) -> Option<Color32> {
    match m {
        Meaning::Ok => Some(GREEN),
        Meaning::ClientError => Some(GREY),
        Meaning::Throttled => Some(AMBER),
        Meaning::ServerError => Some(RED),
        Meaning::Neutral => None,
    }
}

/// Traffic-light colour of a health state.
pub fn health(h: Health) -> Color32 {
    match h {
        Health::Good => GREEN,
        Health::Warn => AMBER,
        Health::Bad => RED,
        Health::Unknown => GREY,
    }
}

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

/// Lines without a state meaning (operations, scopes, principals, caches), in turn: none of them
/// green, amber, red or grey, so a neutral line never reads as a verdict.
pub const NEUTRAL: [Color32; 6] = [
    BLUE,
    Color32::from_rgb(0xbc, 0x8c, 0xff),
    Color32::from_rgb(0x39, 0xc5, 0xcf),
    Color32::from_rgb(0xff, 0x7b, 0xc8),
    Color32::from_rgb(0xd2, 0xa8, 0x6e),
    Color32::from_rgb(0xe6, 0xed, 0xf3),
];

/// The colour of a line named `name`, the `i`-th neutral one when it has no meaning.
pub fn line(name: &str, i: usize) -> Color32 {
    of(crate::model::palette::meaning(name)).unwrap_or(NEUTRAL[i % NEUTRAL.len()])
}

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

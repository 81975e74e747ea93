//! loom model of the status table's sequence lock (`SeqWords`): a reader
//! racing the postmaster's writes gets the old words, the new words, or
//! `Busy` — never a mix of two writes.
#![cfg(loom)]

use std::sync::Arc;

use bgw::status::SeqWords;

#[test]
fn reader_racing_two_writes_sees_whole_writes_only() {
    loom::model(|| {
        let cell = Arc::new(SeqWords::<2>::default());
        let writer = {
            let cell = Arc::clone(&cell);
            loom::thread::spawn(move || {
                cell.write(&[1, 1]);
                cell.write(&[2, 2]);
            })
        };
        let reader = {
            let cell = Arc::clone(&cell);
            loom::thread::spawn(move || cell.read())
        };
        writer.join().unwrap();
        if let Ok(words) = reader.join().unwrap() {
            assert!(
                [[0, 0], [1, 1], [2, 2]].contains(&words),
                "torn read {words:?}"
            );
        }
        assert_eq!(cell.read(), Ok([2, 2]));
    });
}

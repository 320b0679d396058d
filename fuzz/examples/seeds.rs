//! Writes the seed inputs of every fuzz target: `seeds <dir>` creates
//! `<dir>/<target>/<name>` for each (see `relay_fuzz::seeds`).

fn main() -> std::io::Result<()> {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "fuzz/seeds".to_owned());
    let mut n = 0;
    for (target, name, data) in relay_fuzz::seeds::all() {
        let d = std::path::Path::new(&dir).join(target);
        std::fs::create_dir_all(&d)?;
        std::fs::write(d.join(format!("seed-{name}")), data)?;
        n += 1;
    }
    println!("{n} seeds written under {dir}");
    Ok(())
}

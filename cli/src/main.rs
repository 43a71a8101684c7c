fn main() {
    std::process::exit(pier::main_with_args());
}

fn main() {
    // The crate's own tests and examples are linked against libtorch too.
    torch_link::emit(torch_link::Install::BuildTree);
}

"""Every file format the project writes for others or reads from others, one module each:

    folder.py    an export folder whole or not at all; its files stamped with one export id
    pretrain.py  the pretraining export: pretrainer.safetensors, encoder.safetensors, config.json
    hub.py       timm's hub layout (RUN_DIR/best, ``uniemox-finetune --export``), with card.py's model card
    teacher.py   the CLIP teacher's weights: the exported teacher.safetensors and its card, OpenAI's and
                 open_clip's files
    release.py   the authors' release layout and every foreign checkpoint (MAE, timm, DeepSpeed)
    kinds.py     which export a folder holds (``model.init``)

Imported by module (``uniemox.exports.hub`` ...): this package face imports nothing, so reading one
format never pulls in the others' libraries.
"""
